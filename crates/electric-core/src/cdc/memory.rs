//! [`MemoryDatabase`] and [`MemoryChangeSource`]: a scriptable in-memory database and its change
//! stream, for tests and the CLI's embedded demo.
//!
//! The database holds tables of rows (so it knows the truth a connector must converge to);
//! [`MemoryDatabase::commit`] applies a [`Txn`] of inserts, updates and deletes atomically and
//! appends it to a log. Every source made from the database streams that log:
//!
//! - `start(None)` snapshots every configured table ([`SourceEvent::SnapshotStart`], one
//!   [`Op::Insert`] per row, [`SourceEvent::SnapshotEnd`], then an empty batch carrying the
//!   checkpoint), then streams the transactions committed after the snapshot.
//! - `start(Some(checkpoint))` replays every change after the checkpoint, then streams.
//! - A transaction of more than `batch_size` changes arrives as several batches; only the last
//!   carries the checkpoint.
//!
//! # Positions
//!
//! 14 bytes: `b'M'`, the transaction's sequence number (u64, big-endian; the first commit is 1),
//! a phase byte (0: a transaction's change, 1: a snapshot taken after that transaction) and the
//! change's ordinal (u32, big-endian). A checkpoint has ordinal `u32::MAX`. So positions increase
//! in commit order, a snapshot sits between the transaction it follows and the next one, and
//! bytes another source wrote are refused with [`CdcError::BadPosition`].
//!
//! # Bounds
//!
//! The log keeps the last [`MemoryDatabaseBuilder::max_log`] transactions (default 100 000). A
//! source asked to resume before the oldest kept transaction re-snapshots its tables (reason
//! `"history lost"`), as a real source does when its history was purged.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use tokio::sync::watch;

use super::{
    CdcError, CdcResult, ChangeBatch, ChangeItem, ChangeSource, Op, Position, Row, SourceEvent,
    TableName, Value,
};

const TAG: u8 = b'M';
const PHASE_TXN: u8 = 0;
const PHASE_SNAPSHOT: u8 = 1;
/// The default number of transactions the log keeps.
pub const DEFAULT_MAX_LOG: usize = 100_000;
/// The default largest batch a [`MemoryChangeSource`] yields.
pub const DEFAULT_BATCH_SIZE: usize = 256;

fn encode(seq: u64, phase: u8, ordinal: u32) -> Position {
    let mut b = Vec::with_capacity(14);
    b.push(TAG);
    b.extend_from_slice(&seq.to_be_bytes());
    b.push(phase);
    b.extend_from_slice(&ordinal.to_be_bytes());
    Position::from_bytes(b)
}

fn decode(p: &Position) -> CdcResult<(u64, u8, u32)> {
    let b = p.as_bytes();
    if b.len() != 14 || b[0] != TAG || b[9] > PHASE_SNAPSHOT {
        return Err(CdcError::BadPosition {
            reason: format!("{p} was not written by a memory source"),
        });
    }
    let seq = u64::from_be_bytes(b[1..9].try_into().unwrap_or_default());
    let ord = u32::from_be_bytes(b[10..14].try_into().unwrap_or_default());
    Ok((seq, b[9], ord))
}

/// One change of a [`Txn`].
#[derive(Clone, Debug)]
enum TxnOp {
    Insert(TableName, Row),
    Update(TableName, Row),
    Delete(TableName, Row),
}

/// A transaction to [`MemoryDatabase::commit`]: applied all or nothing.
#[derive(Clone, Debug, Default)]
pub struct Txn {
    ops: Vec<TxnOp>,
}

impl Txn {
    /// An empty transaction.
    pub fn new() -> Self {
        Self::default()
    }

    /// Inserts `row` (every column; the key columns must be present and not null).
    pub fn insert(mut self, table: &TableName, row: Row) -> Self {
        self.ops.push(TxnOp::Insert(table.clone(), row));
        self
    }

    /// Updates the row with `row`'s key: the given columns replace the old ones, columns not
    /// given keep their values, and a column given as [`Value::Unchanged`] keeps its value and
    /// reaches the change stream as `Unchanged` (like PostgreSQL's unchanged TOAST values).
    pub fn update(mut self, table: &TableName, row: Row) -> Self {
        self.ops.push(TxnOp::Update(table.clone(), row));
        self
    }

    /// Deletes the row whose key columns `key` gives.
    pub fn delete(mut self, table: &TableName, key: Row) -> Self {
        self.ops.push(TxnOp::Delete(table.clone(), key));
        self
    }

    /// How many changes the transaction holds.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// A `Row` from `(column, value)` pairs.
pub fn row<I, C>(columns: I) -> Row
where
    I: IntoIterator<Item = (C, Value)>,
    C: Into<Arc<str>>,
{
    Row {
        columns: columns.into_iter().map(|(c, v)| (c.into(), v)).collect(),
    }
}

/// What [`MemoryDatabase::commit`] assigned.
#[derive(Clone, Debug, PartialEq)]
pub struct Committed {
    /// The transaction's sequence number (1 for the first commit).
    pub seq: u64,
    /// The position of each change, in the transaction's order.
    pub positions: Vec<Position>,
    /// The checkpoint a source offers after this transaction.
    pub checkpoint: Position,
}

#[derive(Debug)]
struct MemTable {
    key_columns: Vec<Arc<str>>,
    /// Rows by their encoded key.
    rows: BTreeMap<String, Row>,
}

#[derive(Debug)]
struct LoggedTxn {
    seq: u64,
    items: Vec<ChangeItem>,
}

#[derive(Debug)]
struct DbState {
    tables: BTreeMap<TableName, MemTable>,
    log: VecDeque<LoggedTxn>,
    seq: u64,
    acks: BTreeMap<String, Position>,
    fail_reads: u32,
    fail_starts: u32,
    closed: bool,
}

#[derive(Debug)]
struct DbInner {
    state: Mutex<DbState>,
    head: watch::Sender<u64>,
    max_log: usize,
}

/// Builds a [`MemoryDatabase`].
#[derive(Debug, Clone)]
pub struct MemoryDatabaseBuilder {
    max_log: usize,
}

impl MemoryDatabaseBuilder {
    /// How many transactions the log keeps (at least 1; default [`DEFAULT_MAX_LOG`]).
    pub fn max_log(mut self, n: usize) -> Self {
        self.max_log = n;
        self
    }

    /// The database.
    ///
    /// # Errors
    ///
    /// [`CdcError::Config`] for `max_log == 0`.
    pub fn build(self) -> CdcResult<MemoryDatabase> {
        if self.max_log == 0 {
            return Err(CdcError::Config("max_log must be at least 1".into()));
        }
        Ok(MemoryDatabase {
            inner: Arc::new(DbInner {
                state: Mutex::new(DbState {
                    tables: BTreeMap::new(),
                    log: VecDeque::new(),
                    seq: 0,
                    acks: BTreeMap::new(),
                    fail_reads: 0,
                    fail_starts: 0,
                    closed: false,
                }),
                head: watch::channel(0).0,
                max_log: self.max_log,
            }),
        })
    }
}

/// A scriptable in-memory database: tables of rows, a transaction log, and change sources on
/// it. Cheap to clone; clones share the data. See the [module docs](self).
///
/// # Examples
///
/// ```
/// use electric_core::cdc::{memory::{row, MemoryDatabase, Txn}, TableName, Value};
///
/// let db = MemoryDatabase::new();
/// let orders = TableName::new("public", "orders");
/// db.create_table(&orders, &["id"]).unwrap();
/// db.commit(Txn::new().insert(&orders, row([("id", Value::Int(1)), ("qty", Value::Int(5))])))
///     .unwrap();
/// assert_eq!(db.rows(&orders).unwrap().len(), 1);
/// ```
#[derive(Clone, Debug)]
pub struct MemoryDatabase {
    inner: Arc<DbInner>,
}

impl Default for MemoryDatabase {
    fn default() -> Self {
        Self::new()
    }
}

/// The truth map's key for a row: its key columns' values.
fn key_string(table: &TableName, key_columns: &[Arc<str>], row: &Row) -> CdcResult<String> {
    let mut s = String::new();
    for c in key_columns {
        match row.get(c) {
            None | Some(Value::Null) | Some(Value::Unchanged) => {
                return Err(CdcError::Table {
                    table: table.clone(),
                    reason: format!("key column {c} missing or null"),
                })
            }
            Some(v) => {
                s.push_str(&format!("{v:?}"));
                s.push('\u{1f}');
            }
        }
    }
    Ok(s)
}

fn key_row(key_columns: &[Arc<str>], row: &Row) -> Row {
    Row {
        columns: key_columns
            .iter()
            .map(|c| (c.clone(), row.get(c).cloned().unwrap_or(Value::Null)))
            .collect(),
    }
}

impl MemoryDatabase {
    /// An empty database with default settings.
    pub fn new() -> Self {
        Self::builder()
            .build()
            .unwrap_or_else(|_| unreachable!("the defaults are valid"))
    }

    /// A builder.
    pub fn builder() -> MemoryDatabaseBuilder {
        MemoryDatabaseBuilder {
            max_log: DEFAULT_MAX_LOG,
        }
    }

    fn state(&self) -> MutexGuard<'_, DbState> {
        // Every mutation is validated before it is applied, so a panic cannot leave it torn.
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates `table` with primary key `key_columns`.
    ///
    /// # Errors
    ///
    /// [`CdcError::Table`] if it exists or the key is empty.
    pub fn create_table(&self, table: &TableName, key_columns: &[&str]) -> CdcResult<()> {
        if key_columns.is_empty() {
            return Err(CdcError::Table {
                table: table.clone(),
                reason: "a table needs at least one key column".into(),
            });
        }
        let mut st = self.state();
        if st.tables.contains_key(table) {
            return Err(CdcError::Table {
                table: table.clone(),
                reason: "exists already".into(),
            });
        }
        st.tables.insert(
            table.clone(),
            MemTable {
                key_columns: key_columns.iter().map(|c| Arc::from(*c)).collect(),
                rows: BTreeMap::new(),
            },
        );
        Ok(())
    }

    /// Applies `txn` atomically, logs it and wakes every source.
    ///
    /// # Errors
    ///
    /// [`CdcError::Table`] (nothing applied) for an unknown table, a missing or null key column,
    /// inserting a key that exists, or updating or deleting one that does not;
    /// [`CdcError::Closed`] after [`close`](Self::close).
    pub fn commit(&self, txn: Txn) -> CdcResult<Committed> {
        let mut st = self.state();
        if st.closed {
            return Err(CdcError::Closed);
        }
        let seq = st.seq + 1;
        // Validate against a scratch view of the touched rows, then apply.
        let mut scratch: BTreeMap<(TableName, String), Option<Row>> = BTreeMap::new();
        let mut items = Vec::with_capacity(txn.ops.len());
        for (i, op) in txn.ops.into_iter().enumerate() {
            let ordinal = u32::try_from(i)
                .ok()
                .filter(|o| *o < u32::MAX)
                .ok_or_else(|| CdcError::Config("transaction too large".into()))?;
            let (table, given, op) = match op {
                TxnOp::Insert(t, r) => (t, r, Op::Insert),
                TxnOp::Update(t, r) => (t, r, Op::Update),
                TxnOp::Delete(t, r) => (t, r, Op::Delete),
            };
            let mt = st.tables.get(&table).ok_or_else(|| CdcError::Table {
                table: table.clone(),
                reason: "no such table".into(),
            })?;
            let k = key_string(&table, &mt.key_columns, &given)?;
            let slot = (table.clone(), k);
            let current = match scratch.get(&slot) {
                Some(r) => r.clone(),
                None => mt.rows.get(&slot.1).cloned(),
            };
            let fail = |reason: &str| CdcError::Table {
                table: table.clone(),
                reason: format!("{reason} (key {})", slot.1.replace('\u{1f}', " ")),
            };
            let key_src = key_row(&mt.key_columns, &given);
            if given.columns.iter().any(|(_, v)| *v == Value::Unchanged) && op == Op::Insert {
                return Err(fail("an insert cannot hold Unchanged values"));
            }
            let (new_truth, new, old) = match (op, current) {
                (Op::Insert, Some(_)) => return Err(fail("insert of an existing key")),
                (Op::Insert, None) => (Some(given.clone()), Some(given), None),
                (Op::Update | Op::Delete, None) => return Err(fail("no such row")),
                (Op::Update, Some(old)) => {
                    let mut truth = old.clone();
                    let mut emitted = old.clone();
                    for (c, v) in given.columns {
                        let set = |r: &mut Row, v: Value| match r
                            .columns
                            .iter_mut()
                            .find(|(n, _)| *n == c)
                        {
                            Some((_, slot)) => *slot = v,
                            None => r.columns.push((c.clone(), v)),
                        };
                        if v != Value::Unchanged {
                            set(&mut truth, v.clone());
                        }
                        set(&mut emitted, v);
                    }
                    (Some(truth), Some(emitted), Some(old))
                }
                (Op::Delete, Some(old)) => (None, None, Some(old)),
            };
            let key = key_row(
                &mt.key_columns,
                new.as_ref().or(old.as_ref()).unwrap_or(&key_src),
            );
            scratch.insert(slot, new_truth);
            items.push(ChangeItem {
                position: encode(seq, PHASE_TXN, ordinal),
                table,
                op,
                key,
                new,
                old,
            });
        }
        for ((table, k), r) in scratch {
            if let Some(mt) = st.tables.get_mut(&table) {
                match r {
                    Some(r) => mt.rows.insert(k, r),
                    None => mt.rows.remove(&k),
                };
            }
        }
        let positions = items.iter().map(|i| i.position.clone()).collect();
        st.seq = seq;
        st.log.push_back(LoggedTxn { seq, items });
        while st.log.len() > self.inner.max_log {
            st.log.pop_front();
        }
        drop(st);
        self.inner.head.send_replace(seq);
        Ok(Committed {
            seq,
            positions,
            checkpoint: encode(seq, PHASE_TXN, u32::MAX),
        })
    }

    /// The current rows of `table`, ordered by key: the truth.
    ///
    /// # Errors
    ///
    /// [`CdcError::Table`] for an unknown table.
    pub fn rows(&self, table: &TableName) -> CdcResult<Vec<Row>> {
        let st = self.state();
        let mt = st.tables.get(table).ok_or_else(|| CdcError::Table {
            table: table.clone(),
            reason: "no such table".into(),
        })?;
        Ok(mt.rows.values().cloned().collect())
    }

    /// The current row whose key columns `key` gives.
    ///
    /// # Errors
    ///
    /// [`CdcError::Table`] for an unknown table or a key missing a key column.
    pub fn row(&self, table: &TableName, key: &Row) -> CdcResult<Option<Row>> {
        let st = self.state();
        let mt = st.tables.get(table).ok_or_else(|| CdcError::Table {
            table: table.clone(),
            reason: "no such table".into(),
        })?;
        let k = key_string(table, &mt.key_columns, key)?;
        Ok(mt.rows.get(&k).cloned())
    }

    /// The sequence number of the last commit (0 before the first).
    pub fn head(&self) -> u64 {
        self.state().seq
    }

    /// The highest position source `name` acknowledged.
    pub fn acked(&self, name: &str) -> Option<Position> {
        self.state().acks.get(name).cloned()
    }

    /// Makes the next `n` calls to [`ChangeSource::next`] (of any source on this database) fail
    /// with [`CdcError::Unavailable`], as a dropped connection would.
    pub fn fail_next_reads(&self, n: u32) {
        self.state().fail_reads = n;
    }

    /// Makes the next `n` calls to [`ChangeSource::start`] fail with [`CdcError::Unavailable`].
    pub fn fail_next_starts(&self, n: u32) {
        self.state().fail_starts = n;
    }

    /// Closes the database: commits fail with [`CdcError::Closed`] and sources end (`Ok(None)`)
    /// once they have yielded what was committed.
    pub fn close(&self) {
        self.state().closed = true;
        self.inner.head.send_modify(|_| {});
    }

    /// A source builder on this database.
    pub fn source(&self, name: impl Into<String>) -> MemoryChangeSourceBuilder {
        MemoryChangeSourceBuilder {
            db: self.clone(),
            name: name.into(),
            tables: None,
            batch_size: DEFAULT_BATCH_SIZE,
        }
    }
}

/// Builds a [`MemoryChangeSource`].
#[derive(Debug, Clone)]
pub struct MemoryChangeSourceBuilder {
    db: MemoryDatabase,
    name: String,
    tables: Option<Vec<TableName>>,
    batch_size: usize,
}

impl MemoryChangeSourceBuilder {
    /// Only these tables (default: every table of the database at `start`).
    pub fn tables(mut self, tables: impl IntoIterator<Item = TableName>) -> Self {
        self.tables = Some(tables.into_iter().collect());
        self
    }

    /// The largest batch yielded (at least 1; default [`DEFAULT_BATCH_SIZE`]).
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n;
        self
    }

    /// The source (not started).
    ///
    /// # Errors
    ///
    /// [`CdcError::Config`] for a zero batch size or an empty name.
    pub fn build(self) -> CdcResult<MemoryChangeSource> {
        if self.batch_size == 0 {
            return Err(CdcError::Config("batch_size must be at least 1".into()));
        }
        if self.name.is_empty() {
            return Err(CdcError::Config("a source needs a name".into()));
        }
        let head = self.db.inner.head.subscribe();
        Ok(MemoryChangeSource {
            db: self.db,
            name: self.name,
            tables: self.tables,
            batch_size: self.batch_size,
            head,
            cursor: None,
            pending: VecDeque::new(),
        })
    }
}

/// A [`ChangeSource`] on a [`MemoryDatabase`]. See the [module docs](self).
#[derive(Debug)]
pub struct MemoryChangeSource {
    db: MemoryDatabase,
    name: String,
    tables: Option<Vec<TableName>>,
    batch_size: usize,
    head: watch::Receiver<u64>,
    /// The last transaction fully turned into events: `(seq, phase)`; `None` before `start`.
    cursor: Option<Cursor>,
    pending: VecDeque<SourceEvent>,
}

#[derive(Clone, Copy, Debug)]
struct Cursor {
    /// Events were produced for every transaction up to and including `seq`.
    seq: u64,
    /// Inside transaction `seq + 1`, skip changes with an ordinal at or below this one (a
    /// resume from the middle of a transaction).
    skip_next_up_to: Option<u32>,
}

impl MemoryChangeSource {
    fn wanted(&self, t: &TableName) -> bool {
        self.tables.as_ref().is_none_or(|ts| ts.contains(t))
    }

    /// Queues a snapshot of the configured tables as of now; returns the head it reflects.
    fn snapshot(&mut self, st: &DbState, reason: &str) -> u64 {
        let head = st.seq;
        let tables: Vec<TableName> = match &self.tables {
            Some(ts) => ts.clone(),
            None => st.tables.keys().cloned().collect(),
        };
        let mut ordinal = 0u32;
        for t in tables {
            self.pending.push_back(SourceEvent::SnapshotStart {
                table: t.clone(),
                reason: reason.into(),
            });
            if let Some(mt) = st.tables.get(&t) {
                let mut batch = Vec::new();
                for r in mt.rows.values() {
                    batch.push(ChangeItem {
                        position: encode(head, PHASE_SNAPSHOT, ordinal),
                        table: t.clone(),
                        op: Op::Insert,
                        key: key_row(&mt.key_columns, r),
                        new: Some(r.clone()),
                        old: None,
                    });
                    ordinal = ordinal.saturating_add(1).min(u32::MAX - 1);
                    if batch.len() == self.batch_size {
                        self.pending.push_back(SourceEvent::Changes(ChangeBatch {
                            items: std::mem::take(&mut batch),
                            checkpoint: None,
                        }));
                    }
                }
                if !batch.is_empty() {
                    self.pending.push_back(SourceEvent::Changes(ChangeBatch {
                        items: batch,
                        checkpoint: None,
                    }));
                }
            }
            self.pending
                .push_back(SourceEvent::SnapshotEnd { table: t.clone() });
        }
        self.pending.push_back(SourceEvent::Changes(ChangeBatch {
            items: Vec::new(),
            checkpoint: Some(encode(head, PHASE_SNAPSHOT, u32::MAX)),
        }));
        head
    }

    /// Queues the events of the next transaction after the cursor, if there is one. Returns
    /// whether it queued anything.
    fn fill(&mut self) -> bool {
        let Some(cursor) = self.cursor else {
            return false;
        };
        let db = self.db.clone();
        let st = db.state();
        if st.seq <= cursor.seq {
            return false;
        }
        let oldest = st.log.front().map_or(st.seq + 1, |t| t.seq);
        if oldest > cursor.seq + 1 {
            // The log no longer reaches the cursor: resync from a fresh snapshot.
            let head = self.snapshot(&st, "history lost");
            self.cursor = Some(Cursor {
                seq: head,
                skip_next_up_to: None,
            });
            return true;
        }
        let idx = usize::try_from(cursor.seq + 1 - oldest).unwrap_or(usize::MAX);
        let Some(txn) = st.log.get(idx) else {
            return false;
        };
        let skip = cursor.skip_next_up_to;
        let items: Vec<ChangeItem> = txn
            .items
            .iter()
            .filter(|i| self.wanted(&i.table))
            .filter(|i| match skip {
                Some(up_to) => decode(&i.position).is_ok_and(|(_, _, o)| o > up_to),
                None => true,
            })
            .cloned()
            .collect();
        let checkpoint = encode(txn.seq, PHASE_TXN, u32::MAX);
        let seq = txn.seq;
        drop(st);
        let mut chunks = items.chunks(self.batch_size).peekable();
        if chunks.peek().is_none() {
            self.pending.push_back(SourceEvent::Changes(ChangeBatch {
                items: Vec::new(),
                checkpoint: Some(checkpoint.clone()),
            }));
        }
        while let Some(chunk) = chunks.next() {
            let last = chunks.peek().is_none();
            self.pending.push_back(SourceEvent::Changes(ChangeBatch {
                items: chunk.to_vec(),
                checkpoint: last.then(|| checkpoint.clone()),
            }));
        }
        self.cursor = Some(Cursor {
            seq,
            skip_next_up_to: None,
        });
        true
    }
}

#[async_trait]
impl ChangeSource for MemoryChangeSource {
    fn name(&self) -> &str {
        &self.name
    }

    /// Starts (or restarts: calling `start` again resets the stream to `from`).
    ///
    /// # Errors
    ///
    /// [`CdcError::BadPosition`] for bytes another source wrote, a position after the
    /// database's last commit, or one in the middle of a snapshot (never a checkpoint);
    /// [`CdcError::Table`] for a configured table that does not exist; [`CdcError::Unavailable`]
    /// when a failure was injected ([`MemoryDatabase::fail_next_starts`]).
    async fn start(&mut self, from: Option<Position>) -> CdcResult<()> {
        let db = self.db.clone();
        let mut st = db.state();
        if st.fail_starts > 0 {
            st.fail_starts -= 1;
            return Err(CdcError::Unavailable("injected start failure".into()));
        }
        if let Some(ts) = &self.tables {
            if let Some(t) = ts.iter().find(|t| !st.tables.contains_key(*t)) {
                return Err(CdcError::Table {
                    table: t.clone(),
                    reason: "no such table".into(),
                });
            }
        }
        self.pending.clear();
        self.head.mark_unchanged();
        match from {
            None => {
                let head = self.snapshot(&st, "initial");
                self.cursor = Some(Cursor {
                    seq: head,
                    skip_next_up_to: None,
                });
            }
            Some(p) => {
                let (seq, phase, ord) = decode(&p)?;
                if seq > st.seq {
                    return Err(CdcError::BadPosition {
                        reason: format!("{p} is after the database's last commit"),
                    });
                }
                self.cursor = Some(match (phase, ord) {
                    (_, u32::MAX) => Cursor {
                        seq,
                        skip_next_up_to: None,
                    },
                    (PHASE_TXN, o) => Cursor {
                        seq: seq.saturating_sub(1),
                        skip_next_up_to: Some(o),
                    },
                    _ => {
                        return Err(CdcError::BadPosition {
                            reason: format!("{p} lies inside a snapshot"),
                        })
                    }
                });
            }
        }
        Ok(())
    }

    async fn next(&mut self) -> CdcResult<Option<SourceEvent>> {
        if self.cursor.is_none() {
            return Err(CdcError::Config("next() before start()".into()));
        }
        loop {
            {
                let mut st = self.db.state();
                if st.fail_reads > 0 {
                    st.fail_reads -= 1;
                    return Err(CdcError::Unavailable("injected read failure".into()));
                }
            }
            if let Some(ev) = self.pending.pop_front() {
                return Ok(Some(ev));
            }
            if self.fill() {
                continue;
            }
            if self.db.state().closed {
                return Ok(None);
            }
            // Cancel safe: nothing was taken from the queue or the log before this await.
            if self.head.changed().await.is_err() {
                return Ok(None);
            }
        }
    }

    async fn ack(&mut self, position: &Position) -> CdcResult<()> {
        decode(position)?;
        let mut st = self.db.state();
        let slot = st
            .acks
            .entry(self.name.clone())
            .or_insert_with(|| position.clone());
        if *position > *slot {
            *slot = position.clone();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> TableName {
        TableName::new("public", "items")
    }

    fn r(id: i64, v: &str) -> Row {
        row([("id", Value::Int(id)), ("v", Value::Text(v.into()))])
    }

    fn k(id: i64) -> Row {
        row([("id", Value::Int(id))])
    }

    async fn drain(src: &mut MemoryChangeSource) -> Vec<SourceEvent> {
        let mut out = Vec::new();
        loop {
            match tokio::time::timeout(std::time::Duration::from_millis(50), src.next()).await {
                Ok(Ok(Some(ev))) => out.push(ev),
                Ok(Ok(None)) | Err(_) => return out,
                Ok(Err(e)) => panic!("{e}"),
            }
        }
    }

    fn items(evs: &[SourceEvent]) -> Vec<&ChangeItem> {
        evs.iter()
            .filter_map(|e| match e {
                SourceEvent::Changes(b) => Some(b.items.iter()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    fn checkpoints(evs: &[SourceEvent]) -> Vec<Position> {
        evs.iter()
            .filter_map(|e| match e {
                SourceEvent::Changes(b) => b.checkpoint.clone(),
                _ => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn snapshot_then_stream_with_increasing_positions() {
        let db = MemoryDatabase::new();
        db.create_table(&t(), &["id"]).unwrap();
        db.commit(Txn::new().insert(&t(), r(1, "a")).insert(&t(), r(2, "b")))
            .unwrap();
        let mut src = db.source("s").batch_size(1).build().unwrap();
        src.start(None).await.unwrap();
        let evs = drain(&mut src).await;
        assert!(matches!(&evs[0], SourceEvent::SnapshotStart { table, .. } if *table == t()));
        assert_eq!(items(&evs).len(), 2);
        assert!(items(&evs).iter().all(|i| i.op == Op::Insert));
        assert!(matches!(
            &evs[evs.len() - 2],
            SourceEvent::SnapshotEnd { .. }
        ));
        let snap_ckpt = checkpoints(&evs);
        assert_eq!(snap_ckpt.len(), 1);

        let c = db
            .commit(
                Txn::new()
                    .update(&t(), r(1, "a2"))
                    .delete(&t(), k(2))
                    .insert(&t(), r(3, "c")),
            )
            .unwrap();
        let evs2 = drain(&mut src).await;
        // Batch size 1: three batches, only the last has the checkpoint.
        assert_eq!(evs2.len(), 3);
        assert_eq!(checkpoints(&evs2), vec![c.checkpoint.clone()]);
        let its = items(&evs2);
        assert_eq!(
            its.iter().map(|i| i.op).collect::<Vec<_>>(),
            vec![Op::Update, Op::Delete, Op::Insert]
        );
        assert_eq!(its[0].old, Some(r(1, "a")));
        assert_eq!(its[1].key, k(2));
        assert!(its[1].new.is_none());
        let all: Vec<Position> = items(&evs)
            .iter()
            .chain(its.iter())
            .map(|i| i.position.clone())
            .collect();
        assert!(all.windows(2).all(|w| w[0] < w[1]), "{all:?}");
        assert!(snap_ckpt[0] < c.positions[0]);
        assert!(c.positions.iter().all(|p| *p < c.checkpoint));
        assert_eq!(db.rows(&t()).unwrap(), vec![r(1, "a2"), r(3, "c")]);
    }

    #[tokio::test]
    async fn resumes_after_any_checkpoint_it_issued() {
        let db = MemoryDatabase::new();
        db.create_table(&t(), &["id"]).unwrap();
        let mut cks = Vec::new();
        for i in 0..5 {
            cks.push(db.commit(Txn::new().insert(&t(), r(i, "x"))).unwrap());
        }
        for (n, c) in cks.iter().enumerate() {
            let mut src = db.source("s").build().unwrap();
            src.start(Some(c.checkpoint.clone())).await.unwrap();
            let evs = drain(&mut src).await;
            let got: Vec<Position> = items(&evs).iter().map(|i| i.position.clone()).collect();
            let want: Vec<Position> = cks[n + 1..]
                .iter()
                .flat_map(|c| c.positions.clone())
                .collect();
            assert_eq!(got, want);
        }
        // Resuming from the middle of a transaction replays the rest of it.
        let big = db
            .commit(
                Txn::new()
                    .insert(&t(), r(10, "a"))
                    .insert(&t(), r(11, "b"))
                    .insert(&t(), r(12, "c")),
            )
            .unwrap();
        let mut src = db.source("s").build().unwrap();
        src.start(Some(big.positions[0].clone())).await.unwrap();
        let evs = drain(&mut src).await;
        let got: Vec<Position> = items(&evs).iter().map(|i| i.position.clone()).collect();
        assert_eq!(got, big.positions[1..].to_vec());
    }

    #[tokio::test]
    async fn bad_positions_and_configs_are_refused() {
        let db = MemoryDatabase::new();
        db.create_table(&t(), &["id"]).unwrap();
        let mut src = db.source("s").build().unwrap();
        assert!(matches!(src.next().await, Err(CdcError::Config(_))));
        for bad in [
            Position::from_bytes(vec![1, 2, 3]),
            encode(99, PHASE_TXN, u32::MAX),
            encode(0, PHASE_SNAPSHOT, 3),
        ] {
            assert!(
                matches!(
                    src.start(Some(bad.clone())).await,
                    Err(CdcError::BadPosition { .. })
                ),
                "{bad:?}"
            );
        }
        assert!(db.source("s").batch_size(0).build().is_err());
        assert!(MemoryDatabase::builder().max_log(0).build().is_err());
        let mut missing = db
            .source("s")
            .tables([TableName::new("x", "y")])
            .build()
            .unwrap();
        assert!(matches!(
            missing.start(None).await,
            Err(CdcError::Table { .. })
        ));
        // Invalid transactions change nothing.
        db.commit(Txn::new().insert(&t(), r(1, "a"))).unwrap();
        let head = db.head();
        for txn in [
            Txn::new().insert(&t(), r(2, "b")).insert(&t(), r(1, "dup")),
            Txn::new().update(&t(), r(5, "none")),
            Txn::new().delete(&t(), k(5)),
            Txn::new().insert(&t(), row([("v", Value::Int(1))])),
            Txn::new().insert(&TableName::new("no", "table"), r(1, "a")),
        ] {
            assert!(matches!(db.commit(txn), Err(CdcError::Table { .. })));
        }
        assert_eq!(db.head(), head);
        assert_eq!(db.rows(&t()).unwrap(), vec![r(1, "a")]);
    }

    #[tokio::test]
    async fn unchanged_values_keep_the_truth_and_reach_the_stream() {
        let db = MemoryDatabase::new();
        db.create_table(&t(), &["id"]).unwrap();
        db.commit(Txn::new().insert(
            &t(),
            row([
                ("id", Value::Int(1)),
                ("v", Value::Text("big".into())),
                ("n", Value::Int(1)),
            ]),
        ))
        .unwrap();
        let c = db
            .commit(Txn::new().update(
                &t(),
                row([
                    ("id", Value::Int(1)),
                    ("v", Value::Unchanged),
                    ("n", Value::Int(2)),
                ]),
            ))
            .unwrap();
        let truth = db.row(&t(), &k(1)).unwrap().unwrap();
        assert_eq!(truth.get("v"), Some(&Value::Text("big".into())));
        assert_eq!(truth.get("n"), Some(&Value::Int(2)));
        let mut src = db.source("s").build().unwrap();
        src.start(Some(encode(c.seq - 1, PHASE_TXN, u32::MAX)))
            .await
            .unwrap();
        let evs = drain(&mut src).await;
        let new = items(&evs)[0].new.clone().unwrap();
        assert_eq!(new.get("v"), Some(&Value::Unchanged));
    }

    #[tokio::test]
    async fn a_trimmed_log_resnapshots_and_failures_are_injected() {
        let db = MemoryDatabase::builder().max_log(2).build().unwrap();
        db.create_table(&t(), &["id"]).unwrap();
        let first = db.commit(Txn::new().insert(&t(), r(1, "a"))).unwrap();
        for i in 2..6 {
            db.commit(Txn::new().insert(&t(), r(i, "x"))).unwrap();
        }
        let mut src = db.source("s").build().unwrap();
        src.start(Some(first.checkpoint)).await.unwrap();
        let evs = drain(&mut src).await;
        assert!(
            matches!(&evs[0], SourceEvent::SnapshotStart { reason, .. } if &**reason == "history lost")
        );
        assert_eq!(items(&evs).len(), 5);

        db.fail_next_reads(1);
        assert!(matches!(src.next().await, Err(CdcError::Unavailable(_))));
        db.fail_next_starts(1);
        assert!(src.start(None).await.unwrap_err().is_retryable());
        src.ack(&encode(3, PHASE_TXN, u32::MAX)).await.unwrap();
        src.ack(&encode(2, PHASE_TXN, u32::MAX)).await.unwrap();
        assert_eq!(db.acked("s"), Some(encode(3, PHASE_TXN, u32::MAX)));
        db.close();
        src.start(None).await.unwrap();
        let evs = drain(&mut src).await;
        assert!(!evs.is_empty());
        assert!(matches!(src.next().await, Ok(None)));
        assert!(matches!(db.commit(Txn::new()), Err(CdcError::Closed)));
    }
}
