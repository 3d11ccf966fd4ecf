//! [`FakeCt`]: an in-memory database with SQL Server Change Tracking's semantics, for tests.
//!
//! It models what the resume rule depends on, as documented by Microsoft (CHANGETABLE,
//! CHANGE_TRACKING_MIN_VALID_VERSION, "Work with change tracking"):
//!
//! - a database-wide version, incremented by every commit ([`FakeCt::commit`]);
//! - per table, one change record per primary key holding its *last* change (net changes),
//!   with the version that created the row, so `SYS_CHANGE_OPERATION` is `I`, `U` or `D`
//!   relative to the version asked about;
//! - retention cleanup ([`FakeCt::cleanup`]) dropping old records and raising the table's minimum
//!   valid version; `TRUNCATE` ([`FakeCt::truncate`]) emptying the table and its records and
//!   raising the minimum valid version to the new version;
//! - snapshot transactions: a backend's [`CtBackend::begin_snapshot`] freezes the data it reads
//!   — at `BEGIN` or at the first read ([`SnapshotAt`]) — while reads outside a transaction see
//!   the live data page by page, as `READ COMMITTED` does;
//! - scripted races: [`FakeCt::inject`] runs an action right after a given call returns (a commit
//!   landing between reading `CURRENT_VERSION()` and `CHANGETABLE`, cleanup during a read, …);
//!   [`FakeCt::fail_next`] makes a call fail as a dropped connection would.
//!
//! What it does not model: locking, the real SQL text (it interprets [`TableQuery`] directly —
//! the SQL text is covered by golden tests in [`crate::sql`]), column types, collations.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use electric_core::cdc::{CdcError, CdcResult, Value};

use crate::backend::{ChangeRow, CtBackend, DbSettings, ScanRow, TableInfo};
use crate::ident::{Ident, TableRef};
use crate::sql::{ChangeColumn, CmpOp, Filter, Param, TableQuery};

/// Values for [`ct_row!`](crate::ct_row) and [`FakeTx`].
pub trait IntoValue {
    /// The value.
    fn into_value(self) -> Value;
}

impl IntoValue for Value {
    fn into_value(self) -> Value {
        self
    }
}
impl IntoValue for i64 {
    fn into_value(self) -> Value {
        Value::Int(self)
    }
}
impl IntoValue for i32 {
    fn into_value(self) -> Value {
        Value::Int(self.into())
    }
}
impl IntoValue for bool {
    fn into_value(self) -> Value {
        Value::Bool(self)
    }
}
impl IntoValue for f64 {
    fn into_value(self) -> Value {
        Value::Float(self)
    }
}
impl IntoValue for &str {
    fn into_value(self) -> Value {
        Value::Text(self.into())
    }
}
impl IntoValue for String {
    fn into_value(self) -> Value {
        Value::Text(self)
    }
}
impl<T: IntoValue> IntoValue for Option<T> {
    fn into_value(self) -> Value {
        self.map_or(Value::Null, IntoValue::into_value)
    }
}

/// A `Vec<Value>` from mixed literals: `ct_row![1, "open", 5.5, None::<i64>]`.
#[macro_export]
macro_rules! ct_row {
    ($($v:expr),* $(,)?) => {
        vec![$($crate::fake::IntoValue::into_value($v)),*]
    };
}

/// When a snapshot transaction freezes what it reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotAt {
    /// At `BEGIN TRANSACTION`.
    Begin,
    /// At the first read inside the transaction (SQL Server's documented behaviour for
    /// `SNAPSHOT`: the snapshot is taken at the first data access).
    FirstRead,
}

/// A call a backend makes, for [`FakeCt::inject`] and [`FakeCt::fail_next`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Call {
    /// [`CtBackend::current_version`].
    CurrentVersion,
    /// [`CtBackend::begin_snapshot`].
    Begin,
    /// [`CtBackend::min_valid_version`].
    MinValid,
    /// [`CtBackend::changes_since`].
    Changes,
    /// [`CtBackend::full_scan`].
    Scan,
    /// [`CtBackend::commit`].
    Commit,
}

/// How many calls of each kind were made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FakeCalls {
    /// `CURRENT_VERSION()` reads.
    pub current_version: u64,
    /// Transactions begun.
    pub begin: u64,
    /// `MIN_VALID_VERSION` reads.
    pub min_valid: u64,
    /// Changes pages.
    pub changes: u64,
    /// Scan pages.
    pub scan: u64,
    /// Commits.
    pub commit: u64,
}

#[derive(Clone, Debug)]
struct Key(Vec<Value>);

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Key {}
impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Key {
    fn cmp(&self, other: &Self) -> Ordering {
        for (a, b) in self.0.iter().zip(&other.0) {
            let o = total_cmp(a, b);
            if o != Ordering::Equal {
                return o;
            }
        }
        self.0.len().cmp(&other.0.len())
    }
}

fn rank(v: &Value) -> u8 {
    match v {
        Value::Null => 0,
        Value::Bool(_) => 1,
        Value::Int(_) | Value::Float(_) => 2,
        Value::Text(_) => 3,
        Value::Bytes(_) => 4,
        Value::Json(_) => 5,
        Value::Unchanged => 6,
    }
}

fn total_cmp(a: &Value, b: &Value) -> Ordering {
    sql_cmp(a, b).unwrap_or_else(|| match (a, b) {
        (Value::Json(x), Value::Json(y)) => x.to_string().cmp(&y.to_string()),
        _ => rank(a).cmp(&rank(b)),
    })
}

/// SQL comparison: `None` when either side is NULL or the types do not compare.
fn sql_cmp(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        (Value::Int(x), Value::Int(y)) => Some(x.cmp(y)),
        (Value::Int(x), Value::Float(y)) => (*x as f64).partial_cmp(y),
        (Value::Float(x), Value::Int(y)) => x.partial_cmp(&(*y as f64)),
        (Value::Float(x), Value::Float(y)) => x.partial_cmp(y),
        (Value::Text(x), Value::Text(y)) => Some(x.cmp(y)),
        (Value::Bytes(x), Value::Bytes(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

fn param_value(p: &Param) -> Value {
    match p {
        Param::Bool(b) => Value::Bool(*b),
        Param::Int(i) => Value::Int(*i),
        Param::Float(f) => Value::Float(*f),
        Param::Text(s) => Value::Text(s.clone()),
        Param::Bytes(b) => Value::Bytes(b.clone()),
    }
}

#[derive(Clone, Debug)]
struct ChangeRec {
    version: u64,
    creation: Option<u64>,
    deleted: bool,
}

#[derive(Clone, Debug)]
struct Table {
    columns: Vec<Ident>,
    key: Vec<usize>,
    rows: BTreeMap<Key, Vec<Value>>,
    changes: BTreeMap<Key, ChangeRec>,
    min_valid: u64,
    tracked: bool,
}

impl Table {
    fn col(&self, name: &Ident) -> Option<usize> {
        self.columns.iter().position(|c| c == name)
    }

    fn key_of(&self, row: &[Value]) -> Key {
        Key(self.key.iter().map(|&i| row[i].clone()).collect())
    }

    fn matches(&self, filter: &Filter, row: &[Value]) -> Option<bool> {
        let get = |c: &Ident| self.col(c).map(|i| &row[i]).unwrap_or(&Value::Null);
        match filter {
            Filter::Cmp { column, op, value } => {
                let o = sql_cmp(get(column), &param_value(value))?;
                Some(match op {
                    CmpOp::Eq => o == Ordering::Equal,
                    CmpOp::Ne => o != Ordering::Equal,
                    CmpOp::Lt => o == Ordering::Less,
                    CmpOp::Le => o != Ordering::Greater,
                    CmpOp::Gt => o == Ordering::Greater,
                    CmpOp::Ge => o != Ordering::Less,
                })
            }
            Filter::IsNull(c) => Some(matches!(get(c), Value::Null)),
            Filter::IsNotNull(c) => Some(!matches!(get(c), Value::Null)),
            Filter::In { column, values } => {
                let v = get(column);
                let mut unknown = false;
                for p in values {
                    match sql_cmp(v, &param_value(p)) {
                        Some(Ordering::Equal) => return Some(true),
                        None => unknown = true,
                        _ => {}
                    }
                }
                if unknown {
                    None
                } else {
                    Some(false)
                }
            }
            Filter::And(fs) => {
                let mut out = Some(true);
                for f in fs {
                    match self.matches(f, row) {
                        Some(false) => return Some(false),
                        None => out = None,
                        Some(true) => {}
                    }
                }
                out
            }
            Filter::Or(fs) => {
                let mut out = Some(false);
                for f in fs {
                    match self.matches(f, row) {
                        Some(true) => return Some(true),
                        None => out = None,
                        Some(false) => {}
                    }
                }
                out
            }
            Filter::Not(f) => self.matches(f, row).map(|b| !b),
        }
    }
}

#[derive(Clone, Debug)]
struct Snapshot {
    tables: BTreeMap<TableRef, Table>,
}

type Action = Box<dyn FnOnce(&FakeCt) + Send>;

struct State {
    version: u64,
    settings: DbSettings,
    tables: BTreeMap<TableRef, Table>,
    snapshot_at: SnapshotAt,
    cleanup_spares_snapshots: bool,
    /// Per session: `None` = in a transaction whose snapshot is not taken yet.
    sessions: HashMap<u64, Option<Snapshot>>,
    next_session: u64,
    hooks: Vec<(Call, Action)>,
    failures: Vec<Call>,
    calls: FakeCalls,
}

/// The fake database. Cheap to clone (a handle); every [`FakeCt::backend`] is one session.
#[derive(Clone)]
pub struct FakeCt {
    state: Arc<Mutex<State>>,
}

impl Default for FakeCt {
    fn default() -> Self {
        Self::new()
    }
}

/// The writes of one [`FakeCt::commit`].
#[derive(Default)]
pub struct FakeTx {
    ops: Vec<Write>,
}

enum Write {
    Put(TableRef, Vec<Value>),
    Delete(TableRef, Vec<Value>),
}

impl FakeTx {
    /// Inserts or replaces a row (every column, in table order).
    ///
    /// # Panics
    /// On an invalid table name.
    pub fn put(&mut self, table: &str, row: Vec<Value>) {
        self.ops
            .push(Write::Put(TableRef::parse(table).expect("table name"), row));
    }

    /// Deletes the row with this key (key columns in key order); no-op when absent.
    ///
    /// # Panics
    /// On an invalid table name.
    pub fn delete(&mut self, table: &str, key: Vec<Value>) {
        self.ops.push(Write::Delete(
            TableRef::parse(table).expect("table name"),
            key,
        ));
    }
}

impl FakeCt {
    /// An empty database with change tracking and snapshot isolation on, at version 0,
    /// snapshots taken at the first read, cleanup sparing open snapshots.
    pub fn new() -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                version: 0,
                settings: DbSettings {
                    snapshot_isolation: true,
                    change_tracking: true,
                },
                tables: BTreeMap::new(),
                snapshot_at: SnapshotAt::FirstRead,
                cleanup_spares_snapshots: true,
                sessions: HashMap::new(),
                next_session: 1,
                hooks: Vec::new(),
                failures: Vec::new(),
                calls: FakeCalls::default(),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new session (connection).
    pub fn backend(&self) -> FakeCtBackend {
        let mut s = self.lock();
        let id = s.next_session;
        s.next_session += 1;
        FakeCtBackend {
            db: self.clone(),
            session: id,
        }
    }

    /// Sets the database settings.
    pub fn set_settings(&self, settings: DbSettings) {
        self.lock().settings = settings;
    }

    /// When snapshots are taken.
    pub fn set_snapshot_at(&self, at: SnapshotAt) {
        self.lock().snapshot_at = at;
    }

    /// Whether cleanup leaves records visible to open snapshots (default `true`). `false`
    /// models a pessimistic server whose cleanup removes records under a running snapshot.
    pub fn set_cleanup_spares_snapshots(&self, spares: bool) {
        self.lock().cleanup_spares_snapshots = spares;
    }

    /// Creates a table with change tracking on (its minimum valid version is the current
    /// version, as after `ENABLE CHANGE_TRACKING`).
    ///
    /// # Panics
    /// On invalid names or a key column not among the columns.
    pub fn create_table(&self, table: &str, columns: &[&str], key: &[&str]) {
        let t = TableRef::parse(table).expect("table name");
        let columns: Vec<Ident> = columns
            .iter()
            .map(|c| Ident::new(c).expect("column"))
            .collect();
        let key = key
            .iter()
            .map(|k| {
                let k = Ident::new(k).expect("key column");
                columns
                    .iter()
                    .position(|c| *c == k)
                    .expect("key column among columns")
            })
            .collect();
        let mut s = self.lock();
        let min_valid = s.version;
        s.tables.insert(
            t,
            Table {
                columns,
                key,
                rows: BTreeMap::new(),
                changes: BTreeMap::new(),
                min_valid,
                tracked: true,
            },
        );
    }

    /// `DROP TABLE`: reads of it then fail with [`CdcError::Table`], as SQL Server's error 208
    /// ("invalid object name") maps in the real backend; its minimum valid version reads as NULL.
    pub fn drop_table(&self, table: &str) {
        let t = TableRef::parse(table).expect("table name");
        let mut s = self.lock();
        s.version += 1;
        s.tables.remove(&t);
    }

    /// Turns change tracking on or off for a table.
    ///
    /// # Panics
    /// When the table does not exist.
    pub fn set_tracked(&self, table: &str, tracked: bool) {
        let t = TableRef::parse(table).expect("table name");
        let mut s = self.lock();
        let v = s.version;
        let tb = s.tables.get_mut(&t).expect("table exists");
        tb.tracked = tracked;
        if tracked {
            tb.changes.clear();
            tb.min_valid = v;
        }
    }

    /// Commits the writes `f` makes as one transaction; returns its version.
    ///
    /// # Panics
    /// On an unknown table or a row of the wrong width.
    pub fn commit(&self, f: impl FnOnce(&mut FakeTx)) -> u64 {
        let mut tx = FakeTx::default();
        f(&mut tx);
        let mut s = self.lock();
        s.version += 1;
        let v = s.version;
        for w in tx.ops {
            let t = match &w {
                Write::Put(t, _) | Write::Delete(t, _) => t.clone(),
            };
            let tb = s.tables.get_mut(&t).expect("table exists");
            match w {
                Write::Put(_, row) => {
                    assert_eq!(row.len(), tb.columns.len(), "row width for {t}");
                    let k = tb.key_of(&row);
                    let existed = tb.rows.insert(k.clone(), row).is_some();
                    if tb.tracked {
                        let creation = match tb.changes.get(&k) {
                            Some(r) if existed => r.creation,
                            _ if existed => None,
                            _ => Some(v),
                        };
                        tb.changes.insert(
                            k,
                            ChangeRec {
                                version: v,
                                creation,
                                deleted: false,
                            },
                        );
                    }
                }
                Write::Delete(_, key) => {
                    let k = Key(key);
                    if tb.rows.remove(&k).is_some() && tb.tracked {
                        tb.changes.insert(
                            k,
                            ChangeRec {
                                version: v,
                                creation: None,
                                deleted: true,
                            },
                        );
                    }
                }
            }
        }
        v
    }

    /// Retention cleanup: drops `table`'s change records below `min_valid` and raises its
    /// minimum valid version to it.
    ///
    /// # Panics
    /// When the table does not exist.
    pub fn cleanup(&self, table: &str, min_valid: u64) {
        let t = TableRef::parse(table).expect("table name");
        let mut s = self.lock();
        let spare = s.cleanup_spares_snapshots;
        let prune = |tb: &mut Table| {
            tb.changes.retain(|_, r| r.version >= min_valid);
            tb.min_valid = tb.min_valid.max(min_valid);
        };
        prune(s.tables.get_mut(&t).expect("table exists"));
        if !spare {
            for snap in s.sessions.values_mut().flatten() {
                if let Some(tb) = snap.tables.get_mut(&t) {
                    prune(tb);
                }
            }
        }
    }

    /// `TRUNCATE TABLE`: every row goes without change records; the table's minimum valid
    /// version becomes the new database version. Returns that version.
    ///
    /// # Panics
    /// When the table does not exist.
    pub fn truncate(&self, table: &str) -> u64 {
        let t = TableRef::parse(table).expect("table name");
        let mut s = self.lock();
        s.version += 1;
        let v = s.version;
        let tb = s.tables.get_mut(&t).expect("table exists");
        tb.rows.clear();
        tb.changes.clear();
        tb.min_valid = v;
        v
    }

    /// Sets the database version (a restore from backup sets it back).
    pub fn set_version(&self, version: u64) {
        self.lock().version = version;
    }

    /// The current version.
    pub fn version(&self) -> u64 {
        self.lock().version
    }

    /// The table's rows in key order.
    ///
    /// # Panics
    /// When the table does not exist.
    pub fn rows(&self, table: &str) -> Vec<Vec<Value>> {
        let t = TableRef::parse(table).expect("table name");
        self.lock().tables[&t].rows.values().cloned().collect()
    }

    /// Runs `action` once, right after the next `call` (by any session) computed its result.
    pub fn inject(&self, call: Call, action: impl FnOnce(&FakeCt) + Send + 'static) {
        self.lock().hooks.push((call, Box::new(action)));
    }

    /// Makes the next `call` fail with [`CdcError::Unavailable`] before doing anything.
    pub fn fail_next(&self, call: Call) {
        self.lock().failures.push(call);
    }

    /// Call counts.
    pub fn calls(&self) -> FakeCalls {
        self.lock().calls
    }

    fn enter(&self, call: Call) -> CdcResult<()> {
        let mut s = self.lock();
        if let Some(i) = s.failures.iter().position(|c| *c == call) {
            s.failures.remove(i);
            return Err(CdcError::Unavailable(format!("fake: {call:?} failed")));
        }
        let c = &mut s.calls;
        match call {
            Call::CurrentVersion => c.current_version += 1,
            Call::Begin => c.begin += 1,
            Call::MinValid => c.min_valid += 1,
            Call::Changes => c.changes += 1,
            Call::Scan => c.scan += 1,
            Call::Commit => c.commit += 1,
        }
        Ok(())
    }

    fn leave(&self, call: Call) {
        let action = {
            let mut s = self.lock();
            s.hooks
                .iter()
                .position(|(c, _)| *c == call)
                .map(|i| s.hooks.remove(i).1)
        };
        if let Some(a) = action {
            a(self);
        }
    }

    /// Runs `f` on the data `session` reads: its snapshot (taking it if due) or the live data.
    fn read<T>(&self, session: u64, f: impl FnOnce(&BTreeMap<TableRef, Table>) -> T) -> T {
        let mut s = self.lock();
        let take = matches!(s.sessions.get(&session), Some(None));
        if take {
            let snap = Snapshot {
                tables: s.tables.clone(),
            };
            s.sessions.insert(session, Some(snap));
        }
        match s.sessions.get(&session) {
            Some(Some(snap)) => f(&snap.tables),
            _ => f(&s.tables),
        }
    }
}

/// One session on a [`FakeCt`].
pub struct FakeCtBackend {
    db: FakeCt,
    session: u64,
}

impl FakeCtBackend {
    /// The database.
    pub fn db(&self) -> &FakeCt {
        &self.db
    }
}

fn table_of<'a>(tables: &'a BTreeMap<TableRef, Table>, t: &TableRef) -> CdcResult<&'a Table> {
    tables.get(t).ok_or_else(|| CdcError::Table {
        table: t.table_name(),
        reason: "dropped".into(),
    })
}

fn lookup_values(
    tables: &BTreeMap<TableRef, Table>,
    q: &TableQuery,
    tb: &Table,
    row: Option<&[Value]>,
) -> Vec<Value> {
    let Some(l) = &q.spec.lookup else {
        return Vec::new();
    };
    let nulls = vec![Value::Null; l.columns.len()];
    let (Some(row), Some(src)) = (row, tables.get(&l.source)) else {
        return nulls;
    };
    let hit = src.rows.values().find(|sr| {
        l.filter
            .as_ref()
            .is_none_or(|f| src.matches(f, sr) == Some(true))
            && l.on.iter().all(|(lc, tc)| match (src.col(lc), tb.col(tc)) {
                (Some(a), Some(b)) => sql_cmp(&sr[a], &row[b]) == Some(Ordering::Equal),
                _ => false,
            })
    });
    match hit {
        Some(sr) => l
            .columns
            .iter()
            .map(|c| src.col(c).map(|i| sr[i].clone()).unwrap_or(Value::Null))
            .collect(),
        None => nulls,
    }
}

fn selected(
    tables: &BTreeMap<TableRef, Table>,
    q: &TableQuery,
    tb: &Table,
    row: Option<&[Value]>,
) -> Vec<Value> {
    let mut out: Vec<Value> = q
        .columns
        .iter()
        .map(|c| match (row, tb.col(c)) {
            (Some(r), Some(i)) => r[i].clone(),
            _ => Value::Null,
        })
        .collect();
    out.extend(lookup_values(tables, q, tb, row));
    out
}

#[async_trait]
impl CtBackend for FakeCtBackend {
    async fn database_settings(&mut self) -> CdcResult<DbSettings> {
        Ok(self.db.lock().settings)
    }

    async fn describe(&mut self, table: &TableRef) -> CdcResult<Option<TableInfo>> {
        let s = self.db.lock();
        Ok(s.tables.get(table).map(|tb| TableInfo {
            columns: tb.columns.clone(),
            key: tb.key.iter().map(|&i| tb.columns[i].clone()).collect(),
            change_tracking: tb.tracked,
        }))
    }

    async fn current_version(&mut self) -> CdcResult<Option<u64>> {
        self.db.enter(Call::CurrentVersion)?;
        let s = self.db.lock();
        let v = s.settings.change_tracking.then_some(s.version);
        drop(s);
        self.db.leave(Call::CurrentVersion);
        Ok(v)
    }

    async fn begin_snapshot(&mut self) -> CdcResult<()> {
        self.db.enter(Call::Begin)?;
        {
            let mut s = self.db.lock();
            if !s.settings.snapshot_isolation {
                return Err(CdcError::Setting {
                    setting: "ALLOW_SNAPSHOT_ISOLATION".into(),
                    actual: "OFF".into(),
                    needed: "ON".into(),
                });
            }
            let snap = match s.snapshot_at {
                SnapshotAt::Begin => Some(Snapshot {
                    tables: s.tables.clone(),
                }),
                SnapshotAt::FirstRead => None,
            };
            s.sessions.insert(self.session, snap);
        }
        self.db.leave(Call::Begin);
        Ok(())
    }

    async fn min_valid_version(&mut self, table: &TableRef) -> CdcResult<Option<u64>> {
        self.db.enter(Call::MinValid)?;
        // Metadata: read live, but it counts as the first read of the transaction.
        self.db.read(self.session, |_| ());
        let v = {
            let s = self.db.lock();
            s.tables
                .get(table)
                .and_then(|tb| tb.tracked.then_some(tb.min_valid))
        };
        self.db.leave(Call::MinValid);
        Ok(v)
    }

    async fn changes_since(
        &mut self,
        q: &TableQuery,
        since: u64,
        after: Option<&[Value]>,
        limit: usize,
    ) -> CdcResult<Vec<ChangeRow>> {
        self.db.enter(Call::Changes)?;
        let after = after.map(|a| Key(a.to_vec()));
        let rows = self
            .db
            .read(self.session, |tables| -> CdcResult<Vec<ChangeRow>> {
                let tb = table_of(tables, &q.spec.table)?;
                let mut out = Vec::new();
                for (k, rec) in &tb.changes {
                    if out.len() >= limit {
                        break;
                    }
                    if rec.version <= since || after.as_ref().is_some_and(|a| k <= a) {
                        continue;
                    }
                    let row = tb.rows.get(k).map(Vec::as_slice).filter(|r| {
                        q.spec
                            .filter
                            .as_ref()
                            .is_none_or(|f| tb.matches(f, r) == Some(true))
                    });
                    let op = if rec.deleted {
                        "D"
                    } else if rec.creation.is_some_and(|c| c > since) {
                        "I"
                    } else {
                        "U"
                    };
                    let expr = |e: &ChangeColumn| -> Value {
                        match e {
                            ChangeColumn::ChangeVersion => Value::Int(rec.version as i64),
                            ChangeColumn::CreationVersion => {
                                rec.creation.map_or(Value::Null, |c| Value::Int(c as i64))
                            }
                            ChangeColumn::ChangeOperation => Value::Text(op.into()),
                            ChangeColumn::Column(c) => match (row, tb.col(c)) {
                                (Some(r), Some(i)) => r[i].clone(),
                                _ => Value::Null,
                            },
                            ChangeColumn::Lookup(c) => q
                                .spec
                                .lookup
                                .as_ref()
                                .and_then(|l| {
                                    let vals = lookup_values(tables, q, tb, row);
                                    l.columns
                                        .iter()
                                        .position(|x| x == c)
                                        .map(|i| vals[i].clone())
                                })
                                .unwrap_or(Value::Null),
                        }
                    };
                    out.push(ChangeRow {
                        key: k.0.clone(),
                        present: row.is_some(),
                        version: expr(&q.spec.version_expr),
                        operation: expr(&q.spec.operation_expr),
                        columns: selected(tables, q, tb, row),
                    });
                }
                Ok(out)
            })?;
        self.db.leave(Call::Changes);
        Ok(rows)
    }

    async fn full_scan(
        &mut self,
        q: &TableQuery,
        after: Option<&[Value]>,
        limit: usize,
    ) -> CdcResult<Vec<ScanRow>> {
        self.db.enter(Call::Scan)?;
        let after = after.map(|a| Key(a.to_vec()));
        let rows = self
            .db
            .read(self.session, |tables| -> CdcResult<Vec<ScanRow>> {
                let tb = table_of(tables, &q.spec.table)?;
                Ok(tb
                    .rows
                    .iter()
                    .filter(|(k, _)| after.as_ref().is_none_or(|a| *k > a))
                    .filter(|(_, r)| {
                        q.spec
                            .filter
                            .as_ref()
                            .is_none_or(|f| tb.matches(f, r) == Some(true))
                    })
                    .take(limit)
                    .map(|(k, r)| ScanRow {
                        key: k.0.clone(),
                        columns: selected(tables, q, tb, Some(r)),
                    })
                    .collect())
            })?;
        self.db.leave(Call::Scan);
        Ok(rows)
    }

    async fn commit(&mut self) -> CdcResult<()> {
        self.db.enter(Call::Commit)?;
        self.db.lock().sessions.remove(&self.session);
        self.db.leave(Call::Commit);
        Ok(())
    }

    async fn rollback(&mut self) -> CdcResult<()> {
        self.db.lock().sessions.remove(&self.session);
        Ok(())
    }

    async fn reset(&mut self) -> CdcResult<()> {
        self.db.lock().sessions.remove(&self.session);
        Ok(())
    }
}

impl Drop for FakeCtBackend {
    fn drop(&mut self) {
        self.db.lock().sessions.remove(&self.session);
    }
}
