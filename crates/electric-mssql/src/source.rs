//! [`MssqlChangeSource`]: the resume rule, independent of the backend.
//!
//! # One poll ("tick")
//!
//! 1. `cur = CHANGE_TRACKING_CURRENT_VERSION()`, in autocommit, **before** the read
//!    transaction. Nothing else is read while idle: if `cur == last`, the tick ends here and
//!    the empty-poll backoff grows.
//! 2. `SET TRANSACTION ISOLATION LEVEL SNAPSHOT; BEGIN TRANSACTION`.
//! 3. Per table: `min = CHANGE_TRACKING_MIN_VALID_VERSION(t)`. If there is no `last` (first
//!    start), `last < min` (retention cleanup or `TRUNCATE` passed it) or the configuration
//!    changed since the checkpoint: a full resync — [`SourceEvent::SnapshotStart`] with the
//!    reason, every current row as an insert, [`SourceEvent::SnapshotEnd`]. Otherwise
//!    `CHANGETABLE(CHANGES t, @last)` `LEFT JOIN`ed to the current row, page by page in key
//!    order: a joined row present ⇒ upsert (insert when the operation says `I`, else update), no
//!    row (deleted, or no longer matching the filter) ⇒ delete. The joined row is the truth; the
//!    operation is advisory. Then `min` is read again: if cleanup passed `last` during the read,
//!    the table is resynced in the same transaction (defence in depth; with real snapshot
//!    isolation the read is consistent anyway).
//! 4. `COMMIT`; the last batch carries the checkpoint `cur`. The connector persists it only
//!    after the sink applied everything up to it, then [`ChangeSource::ack`]s it; a restart
//!    resumes from the persisted checkpoint.
//!
//! # Why `cur` is read first, outside the transaction
//!
//! Everything committed at or below `cur` is visible to the snapshot, which is established
//! after `cur` was read, whatever `CURRENT_VERSION()`'s own snapshot behaviour is (no document
//! says). So resuming from `cur` loses nothing. Commits landing between reading `cur` and the
//! snapshot are read now *and* again next tick (their versions are above `cur`): duplicates,
//! only in that window, and harmless because each carries the row's current state.
//!
//! # The original's two flaws (SPEC §10.1), both avoided
//!
//! It advanced to `max(SYS_CHANGE_VERSION)` of a query run without snapshot isolation (a row
//! missed by that read is skipped for ever), and on empty polls refreshed its version from
//! `CURRENT_VERSION()` after the query (a commit landing between the two is skipped). Its
//! baseline was memory only. The tests in `tests/resume_rule.rs` run both flaws against the
//! same fake and show the loss.
//!
//! # Positions
//!
//! Items: `[1][cur: u64 BE][cycle: u32 BE][seq: u64 BE]` (21 bytes). Checkpoints: `[1][cur][cycle]
//! [u64::MAX][fingerprint: u64 BE]` (29 bytes). `cycle` counts ticks at the same `cur` (a resync
//! without a version change, a cycle restarted after an error), so positions strictly increase
//! across ticks, restarts and resyncs. The fingerprint is a hash of the generated SQL: a
//! checkpoint written under other tables, columns or filters resyncs every table.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use electric_core::cdc::{
    CdcError, CdcResult, ChangeBatch, ChangeItem, ChangeSource, Op, Position, Row, SourceEvent,
    Value,
};

use crate::backend::{ChangeRow, CtBackend, ScanRow};
use crate::sql::{self, TableQuery, TrackedTable};

/// The position format this crate writes.
pub const POSITION_FORMAT: u8 = 1;
const ITEM_LEN: usize = 21;
const CHECKPOINT_LEN: usize = 29;

/// The most rows one page (and so one [`ChangeBatch`]) may hold.
pub const MAX_BATCH_SIZE: usize = 100_000;
/// The empty-poll counter is clamped here, as the original's was.
pub const MAX_EMPTY_POLLS: u32 = 1_000_000;
/// No backoff waits longer than this, whatever a custom function returns.
pub const MAX_POLL_WAIT: Duration = Duration::from_secs(60);

/// A decoded position.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct MssqlPosition {
    /// The change-tracking version the tick read (`cur`).
    pub version: u64,
    /// Ticks at the same version before this one.
    pub cycle: u32,
    /// The item's ordinal in the tick; `None` for a checkpoint.
    pub seq: Option<u64>,
    /// The configuration fingerprint (checkpoints only).
    pub fingerprint: Option<u64>,
}

impl MssqlPosition {
    fn item(version: u64, cycle: u32, seq: u64) -> Position {
        let mut b = Vec::with_capacity(ITEM_LEN);
        b.push(POSITION_FORMAT);
        b.extend_from_slice(&version.to_be_bytes());
        b.extend_from_slice(&cycle.to_be_bytes());
        b.extend_from_slice(&seq.to_be_bytes());
        Position::from_bytes(b)
    }

    fn checkpoint(version: u64, cycle: u32, fingerprint: u64) -> Position {
        let mut b = Vec::with_capacity(CHECKPOINT_LEN);
        b.push(POSITION_FORMAT);
        b.extend_from_slice(&version.to_be_bytes());
        b.extend_from_slice(&cycle.to_be_bytes());
        b.extend_from_slice(&u64::MAX.to_be_bytes());
        b.extend_from_slice(&fingerprint.to_be_bytes());
        Position::from_bytes(b)
    }

    /// Decodes a position this crate wrote.
    ///
    /// # Errors
    /// [`CdcError::BadPosition`] for anything else.
    pub fn decode(position: &Position) -> CdcResult<Self> {
        let b = position.as_bytes();
        let bad = |reason: &str| CdcError::BadPosition {
            reason: format!("{reason} ({} bytes: {position})", b.len()),
        };
        if b.first() != Some(&POSITION_FORMAT) {
            return Err(bad("not an SQL Server change-tracking position"));
        }
        let u64_at = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[i..i + 8]);
            u64::from_be_bytes(a)
        };
        let (version, cycle, seq) = match b.len() {
            ITEM_LEN | CHECKPOINT_LEN => {
                let mut c = [0u8; 4];
                c.copy_from_slice(&b[9..13]);
                (u64_at(1), u32::from_be_bytes(c), u64_at(13))
            }
            _ => return Err(bad("wrong length")),
        };
        if b.len() == ITEM_LEN {
            if seq == u64::MAX {
                return Err(bad("item ordinal out of range"));
            }
            return Ok(Self {
                version,
                cycle,
                seq: Some(seq),
                fingerprint: None,
            });
        }
        if seq != u64::MAX {
            return Err(bad("checkpoint without its marker"));
        }
        Ok(Self {
            version,
            cycle,
            seq: None,
            fingerprint: Some(u64_at(21)),
        })
    }
}

/// How long to wait after empty polls (the original's `waitTimeBetweenQueriesAction`).
///
/// A poll is empty when `CURRENT_VERSION()` did not move, or moved (another table changed) but
/// brought no change of the tracked tables. The counter is reset by a poll with changes and
/// clamped at [`MAX_EMPTY_POLLS`]; every wait is clamped to [`MAX_POLL_WAIT`].
#[derive(Clone)]
pub enum PollBackoff {
    /// `min(n × step, max)` after `n` empty polls: the original's typical `n => min(n × 10 ms,
    /// 5000 ms)` is the default.
    Linear {
        /// Added per empty poll.
        step: Duration,
        /// The cap.
        max: Duration,
    },
    /// The same wait after every empty poll (the original's consumers' `CDCInterval`).
    Fixed(Duration),
    /// Any function of the empty-poll count (≥ 1).
    Custom(Arc<dyn Fn(u32) -> Duration + Send + Sync>),
}

impl Default for PollBackoff {
    fn default() -> Self {
        Self::Linear {
            step: Duration::from_millis(10),
            max: Duration::from_millis(5000),
        }
    }
}

impl fmt::Debug for PollBackoff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Linear { step, max } => f
                .debug_struct("Linear")
                .field("step", step)
                .field("max", max)
                .finish(),
            Self::Fixed(d) => f.debug_tuple("Fixed").field(d).finish(),
            Self::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

impl PollBackoff {
    /// The wait after `empty_polls` consecutive empty polls (0 ⇒ none).
    pub fn wait(&self, empty_polls: u32) -> Duration {
        if empty_polls == 0 {
            return Duration::ZERO;
        }
        let n = empty_polls.min(MAX_EMPTY_POLLS);
        let d = match self {
            Self::Linear { step, max } => step.saturating_mul(n).min(*max),
            Self::Fixed(d) => *d,
            Self::Custom(f) => f(n),
        };
        d.min(MAX_POLL_WAIT)
    }
}

/// Counters, for tests and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MssqlStats {
    /// `CURRENT_VERSION()` reads (one per tick).
    pub polls: u64,
    /// Ticks that opened a read transaction.
    pub cycles: u64,
    /// Ticks completed (checkpoint emitted).
    pub completed: u64,
    /// Full resyncs of a table.
    pub resyncs: u64,
    /// The current count of consecutive empty polls.
    pub empty_polls: u32,
}

/// Builds a [`MssqlChangeSource`].
pub struct MssqlChangeSourceBuilder<B> {
    backend: B,
    name: String,
    tables: Vec<TrackedTable>,
    batch_size: usize,
    backoff: PollBackoff,
}

impl<B: CtBackend> MssqlChangeSourceBuilder<B> {
    /// The name in logs and [`ChangeSource::name`] (`mssql:<name>`). Default `ct`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Adds a table.
    pub fn table(mut self, table: TrackedTable) -> Self {
        self.tables.push(table);
        self
    }

    /// Rows per page and per batch (1 to [`MAX_BATCH_SIZE`], default 1,000).
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n;
        self
    }

    /// The empty-poll backoff (default [`PollBackoff::default`]).
    pub fn backoff(mut self, backoff: PollBackoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Validates and builds. Nothing is sent to the server until [`ChangeSource::start`].
    ///
    /// # Errors
    /// [`CdcError::Config`] for no table, a table listed twice, a bad batch size or name, or
    /// invalid table options.
    pub fn build(self) -> CdcResult<MssqlChangeSource<B>> {
        if self.tables.is_empty() {
            return Err(CdcError::Config("no table to track".into()));
        }
        if self.name.is_empty() || self.name.len() > 200 || self.name.chars().any(char::is_control)
        {
            return Err(CdcError::Config(format!(
                "source name {:?} must be 1 to 200 printable characters",
                self.name
            )));
        }
        if self.batch_size == 0 || self.batch_size > MAX_BATCH_SIZE {
            return Err(CdcError::Config(format!(
                "batch size {} is outside 1..={MAX_BATCH_SIZE}",
                self.batch_size
            )));
        }
        for (i, t) in self.tables.iter().enumerate() {
            t.validate()?;
            if self.tables[..i].iter().any(|o| o.table == t.table) {
                return Err(CdcError::Config(format!("table {} listed twice", t.table)));
            }
        }
        Ok(MssqlChangeSource {
            name: format!("mssql:{}", self.name),
            backend: self.backend,
            specs: self.tables,
            batch_size: self.batch_size,
            backoff: self.backoff,
            started: false,
            queries: Vec::new(),
            fingerprint: 0,
            last: None,
            alloc: None,
            resync_all: None,
            cycle: None,
            queue: VecDeque::new(),
            pending: None,
            in_call: false,
            emitted: None,
            acked: None,
            stats: MssqlStats::default(),
        })
    }
}

enum Phase {
    Check,
    Changes(Option<Vec<Value>>),
    PostCheck,
    Scan(Option<Vec<Value>>),
}

struct Cycle {
    cur: u64,
    cycle: u32,
    seq: u64,
    table: usize,
    phase: Phase,
    items: u64,
}

/// SQL Server Change Tracking as a [`ChangeSource`]: polls `CHANGETABLE` with the resume rule
/// in the [module docs](self), through a [`CtBackend`].
///
/// # Examples
///
/// ```
/// use electric_core::cdc::{ChangeSource, SourceEvent};
/// use electric_mssql::{fake::FakeCt, MssqlChangeSource, TrackedTable};
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let db = FakeCt::new();
/// db.create_table("dbo.orders", &["id", "qty"], &["id"]);
/// db.commit(|tx| tx.put("dbo.orders", electric_mssql::ct_row![1, 5]));
///
/// let mut source = MssqlChangeSource::builder(db.backend())
///     .table(TrackedTable::new("dbo.orders")?)
///     .build()?;
/// source.start(None).await?; // no checkpoint: an initial snapshot
/// assert!(matches!(source.next().await?, Some(SourceEvent::SnapshotStart { .. })));
/// # Ok::<_, electric_core::cdc::CdcError>(())
/// # }).unwrap();
/// ```
pub struct MssqlChangeSource<B> {
    name: String,
    backend: B,
    specs: Vec<TrackedTable>,
    batch_size: usize,
    backoff: PollBackoff,
    started: bool,
    queries: Vec<TableQuery>,
    fingerprint: u64,
    /// Everything committed at or below this version has been emitted (None: nothing loaded).
    last: Option<u64>,
    /// The last `(cur, cycle)` handed out, completed or not.
    alloc: Option<(u64, u32)>,
    /// Resync every table in the next tick, and why.
    resync_all: Option<Arc<str>>,
    cycle: Option<Cycle>,
    queue: VecDeque<SourceEvent>,
    pending: Option<ChangeBatch>,
    in_call: bool,
    emitted: Option<Position>,
    acked: Option<Position>,
    stats: MssqlStats,
}

impl<B: CtBackend> MssqlChangeSource<B> {
    /// A builder over `backend`.
    pub fn builder(backend: B) -> MssqlChangeSourceBuilder<B> {
        MssqlChangeSourceBuilder {
            backend,
            name: "ct".into(),
            tables: Vec::new(),
            batch_size: 1000,
            backoff: PollBackoff::default(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> MssqlStats {
        self.stats
    }

    /// The newest checkpoint acknowledged through [`ChangeSource::ack`].
    pub fn acked(&self) -> Option<&Position> {
        self.acked.as_ref()
    }

    /// The newest checkpoint emitted.
    pub fn emitted(&self) -> Option<&Position> {
        self.emitted.as_ref()
    }

    /// The resolved queries (after [`ChangeSource::start`]).
    pub fn queries(&self) -> &[TableQuery] {
        &self.queries
    }

    /// The backend.
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    async fn resolve(&mut self) -> CdcResult<()> {
        let settings = self.backend.database_settings().await?;
        if !settings.change_tracking {
            return Err(CdcError::Setting {
                setting: "CHANGE_TRACKING (database)".into(),
                actual: "OFF".into(),
                needed: "ON: ALTER DATABASE … SET CHANGE_TRACKING = ON (CHANGE_RETENTION = 2 DAYS, AUTO_CLEANUP = ON)".into(),
            });
        }
        if !settings.snapshot_isolation {
            return Err(CdcError::Setting {
                setting: "ALLOW_SNAPSHOT_ISOLATION".into(),
                actual: "OFF".into(),
                needed: "ON: ALTER DATABASE … SET ALLOW_SNAPSHOT_ISOLATION ON".into(),
            });
        }
        let mut queries = Vec::with_capacity(self.specs.len());
        for spec in &self.specs {
            let not_found = |t: &crate::ident::TableRef| CdcError::Table {
                table: t.table_name(),
                reason: "not found (or not visible to this user)".into(),
            };
            let info = self
                .backend
                .describe(&spec.table)
                .await?
                .ok_or_else(|| not_found(&spec.table))?;
            if !info.change_tracking {
                return Err(CdcError::Setting {
                    setting: format!("CHANGE_TRACKING on {}", spec.table),
                    actual: "OFF (or not visible to this user)".into(),
                    needed: format!(
                        "ON: ALTER TABLE {} ENABLE CHANGE_TRACKING",
                        spec.table.quoted()
                    ),
                });
            }
            let lookup_cols = match &spec.lookup {
                Some(l) => Some(
                    self.backend
                        .describe(&l.source)
                        .await?
                        .ok_or_else(|| not_found(&l.source))?
                        .columns,
                ),
                None => None,
            };
            queries.push(TableQuery::resolve(
                spec,
                &info.key,
                &info.columns,
                lookup_cols.as_deref(),
            )?);
        }
        let mut h = Fnv::new();
        for q in &queries {
            for s in [sql::changes_sql(q, 0, None, 1)?, sql::scan_sql(q, None, 1)?] {
                h.write(s.text.as_bytes());
                h.write(format!("{:?}", s.params).as_bytes());
            }
            h.write(&[u8::from(q.spec.change_columns)]);
        }
        self.fingerprint = h.finish();
        self.queries = queries;
        Ok(())
    }

    /// Runs a backend call, noting that one is in flight so a cancelled call is detected.
    async fn call<T>(
        in_call: &mut bool,
        fut: impl std::future::Future<Output = CdcResult<T>>,
    ) -> CdcResult<T> {
        *in_call = true;
        let r = fut.await;
        *in_call = false;
        r
    }

    fn push(&mut self, event: SourceEvent) {
        if let Some(b) = self.pending.take() {
            self.queue.push_back(SourceEvent::Changes(b));
        }
        match event {
            SourceEvent::Changes(b) => self.pending = Some(b),
            e => self.queue.push_back(e),
        }
    }

    fn flush_pending(&mut self) {
        if let Some(b) = self.pending.take() {
            self.queue.push_back(SourceEvent::Changes(b));
        }
    }

    async fn abandon_cycle(&mut self) {
        if self.cycle.take().is_some() {
            let _ = self.backend.rollback().await;
        }
        self.flush_pending();
    }

    /// Starts a tick: reads `cur`; opens the read transaction when there is anything to do.
    async fn tick(&mut self, check_all: bool) -> CdcResult<bool> {
        let cur = Self::call(&mut self.in_call, self.backend.current_version())
            .await?
            .ok_or_else(|| CdcError::Setting {
                setting: "CHANGE_TRACKING (database)".into(),
                actual: "OFF (CHANGE_TRACKING_CURRENT_VERSION() is NULL)".into(),
                needed: "ON".into(),
            })?;
        self.stats.polls += 1;
        if let Some((v, _)) = self.alloc {
            if cur < v {
                return Err(CdcError::HistoryLost(format!(
                    "change tracking version went back from {v} to {cur} (database restored?); \
                     start again without a checkpoint"
                )));
            }
        }
        let moved = self.last.is_none_or(|l| cur > l);
        if !moved && !check_all && self.resync_all.is_none() {
            self.stats.empty_polls = (self.stats.empty_polls + 1).min(MAX_EMPTY_POLLS);
            return Ok(false);
        }
        let cycle = match self.alloc {
            Some((v, c)) if v == cur => c
                .checked_add(1)
                .ok_or_else(|| CdcError::HistoryLost(format!("too many ticks at version {cur}")))?,
            _ => 0,
        };
        self.alloc = Some((cur, cycle));
        Self::call(&mut self.in_call, self.backend.begin_snapshot()).await?;
        self.stats.cycles += 1;
        self.cycle = Some(Cycle {
            cur,
            cycle,
            seq: 0,
            table: 0,
            phase: Phase::Check,
            items: 0,
        });
        Ok(true)
    }

    /// Advances the open tick by one backend call.
    async fn step(&mut self) -> CdcResult<()> {
        let Some(c) = self.cycle.as_mut() else {
            return Ok(());
        };
        if c.table == self.queries.len() {
            Self::call(&mut self.in_call, self.backend.commit()).await?;
            let c = self.cycle.take().expect("cycle");
            let cp = MssqlPosition::checkpoint(c.cur, c.cycle, self.fingerprint);
            match self.pending.as_mut() {
                Some(b) => b.checkpoint = Some(cp.clone()),
                None => {
                    self.pending = Some(ChangeBatch {
                        items: Vec::new(),
                        checkpoint: Some(cp.clone()),
                    })
                }
            }
            self.flush_pending();
            self.emitted = Some(cp);
            self.last = Some(c.cur);
            self.resync_all = None;
            self.stats.completed += 1;
            self.stats.empty_polls = if c.items == 0 {
                (self.stats.empty_polls + 1).min(MAX_EMPTY_POLLS)
            } else {
                0
            };
            return Ok(());
        }
        let q = &self.queries[c.table];
        let table = q.spec.table.clone();
        let limit = self.batch_size;
        match &c.phase {
            Phase::Check => {
                let min =
                    Self::call(&mut self.in_call, self.backend.min_valid_version(&table)).await?;
                let Some(min) = min else {
                    return Err(self.explain_min_null(&table).await);
                };
                let c = self.cycle.as_mut().expect("cycle");
                let reason: Option<Arc<str>> = match (self.last, &self.resync_all) {
                    (None, _) => Some("initial".into()),
                    (_, Some(r)) => Some(r.clone()),
                    (Some(l), None) if l < min => Some(
                        format!("change tracking version expired (resume version {l} < minimum valid version {min})").into(),
                    ),
                    _ => None,
                };
                if let Some(reason) = reason {
                    c.phase = Phase::Scan(None);
                    self.stats.resyncs += 1;
                    self.push(SourceEvent::SnapshotStart {
                        table: table.table_name(),
                        reason,
                    });
                } else if self.last.is_some_and(|l| c.cur > l) {
                    c.phase = Phase::Changes(None);
                } else {
                    c.table += 1;
                    c.phase = Phase::Check;
                }
            }
            Phase::Changes(after) => {
                let since = self.last.expect("changes only after a load");
                let after = after.clone();
                let rows = Self::call(
                    &mut self.in_call,
                    self.backend
                        .changes_since(q, since, after.as_deref(), limit),
                )
                .await?;
                let full = rows.len() >= limit;
                let q = &self.queries[self.cycle.as_ref().expect("cycle").table];
                let c = self.cycle.as_mut().expect("cycle");
                let next_after = rows.last().map(|r| r.key.clone());
                let items = rows
                    .into_iter()
                    .map(|r| {
                        c.seq += 1;
                        change_item(q, r, MssqlPosition::item(c.cur, c.cycle, c.seq - 1))
                    })
                    .collect::<CdcResult<Vec<_>>>()?;
                c.items += items.len() as u64;
                c.phase = if full {
                    Phase::Changes(next_after)
                } else {
                    Phase::PostCheck
                };
                if !items.is_empty() {
                    self.push(SourceEvent::Changes(ChangeBatch {
                        items,
                        checkpoint: None,
                    }));
                }
            }
            Phase::PostCheck => {
                let min =
                    Self::call(&mut self.in_call, self.backend.min_valid_version(&table)).await?;
                let Some(min) = min else {
                    return Err(self.explain_min_null(&table).await);
                };
                let c = self.cycle.as_mut().expect("cycle");
                let l = self.last.expect("post-check only after changes");
                if l < min {
                    c.phase = Phase::Scan(None);
                    self.stats.resyncs += 1;
                    self.push(SourceEvent::SnapshotStart {
                        table: table.table_name(),
                        reason: format!(
                            "change tracking cleanup passed the resume version {l} during the read (minimum valid version {min})"
                        )
                        .into(),
                    });
                } else {
                    c.table += 1;
                    c.phase = Phase::Check;
                }
            }
            Phase::Scan(after) => {
                let after = after.clone();
                let rows = Self::call(
                    &mut self.in_call,
                    self.backend.full_scan(q, after.as_deref(), limit),
                )
                .await?;
                let full = rows.len() >= limit;
                let q = &self.queries[self.cycle.as_ref().expect("cycle").table];
                let c = self.cycle.as_mut().expect("cycle");
                let next_after = rows.last().map(|r| r.key.clone());
                let items = rows
                    .into_iter()
                    .map(|r| {
                        c.seq += 1;
                        scan_item(q, r, MssqlPosition::item(c.cur, c.cycle, c.seq - 1))
                    })
                    .collect::<CdcResult<Vec<_>>>()?;
                c.items += items.len() as u64;
                let done = !full;
                if done {
                    c.table += 1;
                    c.phase = Phase::Check;
                } else {
                    c.phase = Phase::Scan(next_after);
                }
                if !items.is_empty() {
                    self.push(SourceEvent::Changes(ChangeBatch {
                        items,
                        checkpoint: None,
                    }));
                }
                if done {
                    self.push(SourceEvent::SnapshotEnd {
                        table: table.table_name(),
                    });
                }
            }
        }
        Ok(())
    }
}

impl<B: CtBackend> MssqlChangeSource<B> {
    /// `MIN_VALID_VERSION` read NULL: the table was dropped, its change tracking turned off,
    /// or the user may not see it. The catalog tells which.
    async fn explain_min_null(&mut self, table: &crate::ident::TableRef) -> CdcError {
        match Self::call(&mut self.in_call, self.backend.describe(table)).await {
            Ok(None) => CdcError::Table {
                table: table.table_name(),
                reason: "dropped (or no longer visible to this user) while being tracked".into(),
            },
            Ok(Some(info)) if !info.change_tracking => CdcError::Setting {
                setting: format!("CHANGE_TRACKING on {table}"),
                actual: "OFF (turned off while being tracked)".into(),
                needed: format!("ON: ALTER TABLE {} ENABLE CHANGE_TRACKING", table.quoted()),
            },
            Ok(Some(_)) => min_null(table),
            Err(e) => e,
        }
    }
}

fn min_null(table: &crate::ident::TableRef) -> CdcError {
    CdcError::Permission {
        right: format!("VIEW CHANGE TRACKING on {table}"),
        detail: "CHANGE_TRACKING_MIN_VALID_VERSION is NULL: change tracking is off for the table \
                 or the user may not see it (GRANT VIEW CHANGE TRACKING ON … TO …)"
            .into(),
    }
}

fn malformed(q: &TableQuery, what: &str, got: usize, want: usize) -> CdcError {
    CdcError::Malformed {
        what: "change tracking row",
        reason: format!("{}: {got} {what} values, expected {want}", q.spec.table),
    }
}

fn key_row(q: &TableQuery, key: Vec<Value>) -> CdcResult<Row> {
    if key.len() != q.key.len() {
        return Err(malformed(q, "key", key.len(), q.key.len()));
    }
    Ok(Row {
        columns: q
            .key
            .iter()
            .map(|k| Arc::<str>::from(k.as_str()))
            .zip(key)
            .collect(),
    })
}

fn value_row(q: &TableQuery, values: Vec<Value>) -> CdcResult<Row> {
    let names = q.column_names();
    if values.len() != names.len() {
        return Err(malformed(q, "column", values.len(), names.len()));
    }
    Ok(Row {
        columns: names
            .into_iter()
            .map(Arc::<str>::from)
            .zip(values)
            .collect(),
    })
}

fn change_item(q: &TableQuery, r: ChangeRow, position: Position) -> CdcResult<ChangeItem> {
    let key = key_row(q, r.key)?;
    let (op, new) = if r.present {
        let insert = matches!(&r.operation, Value::Text(s) if s.trim() == "I");
        let mut row = value_row(q, r.columns)?;
        if q.spec.change_columns {
            row.columns.push(("SYS_CHANGE_VERSION".into(), r.version));
            row.columns
                .push(("SYS_CHANGE_OPERATION".into(), r.operation));
        }
        (if insert { Op::Insert } else { Op::Update }, Some(row))
    } else {
        (Op::Delete, None)
    };
    Ok(ChangeItem {
        position,
        table: q.spec.table.table_name(),
        op,
        key,
        new,
        old: None,
    })
}

fn scan_item(q: &TableQuery, r: ScanRow, position: Position) -> CdcResult<ChangeItem> {
    Ok(ChangeItem {
        position,
        table: q.spec.table.table_name(),
        op: Op::Insert,
        key: key_row(q, r.key)?,
        new: Some(value_row(q, r.columns)?),
        old: None,
    })
}

/// FNV-1a, 64 bit: stable across builds and platforms (the fingerprint is persisted).
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
    fn write_raw(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    /// `bytes`, then a `0xff` separator (never valid UTF-8) so fields cannot run together.
    fn write(&mut self, bytes: &[u8]) {
        self.write_raw(bytes);
        self.write_raw(&[0xff]);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

#[async_trait]
impl<B: CtBackend> ChangeSource for MssqlChangeSource<B> {
    fn name(&self) -> &str {
        &self.name
    }

    /// Checks the database (change tracking, `ALLOW_SNAPSHOT_ISOLATION`) and every table
    /// (exists, primary key, change tracking on, every named column exists), then resumes after
    /// `from` or, without it, loads every table (an initial snapshot).
    async fn start(&mut self, from: Option<Position>) -> CdcResult<()> {
        if self.in_call {
            self.in_call = false;
            self.backend.reset().await?;
        }
        if self.cycle.take().is_some() {
            let _ = self.backend.rollback().await;
        }
        self.queue.clear();
        self.pending = None;
        let from = from.as_ref().map(MssqlPosition::decode).transpose()?;
        if from.is_some_and(|p| p.seq.is_some()) {
            return Err(CdcError::BadPosition {
                reason: "an item's position, not a checkpoint".into(),
            });
        }
        self.resolve().await?;
        self.stats.empty_polls = 0;
        match from {
            None => {
                self.last = None;
                self.alloc = None;
                self.resync_all = None;
                self.emitted = None;
            }
            Some(p) => {
                self.last = Some(p.version);
                self.alloc = Some((p.version, p.cycle));
                self.emitted = Some(MssqlPosition::checkpoint(
                    p.version,
                    p.cycle,
                    p.fingerprint.unwrap_or_default(),
                ));
                self.resync_all = (p.fingerprint != Some(self.fingerprint))
                    .then(|| "source configuration changed since the checkpoint".into());
            }
        }
        self.acked = None;
        self.started = true;
        // The first tick always checks every table's minimum valid version.
        self.tick(true).await?;
        Ok(())
    }

    /// # Cancel safety
    /// Cancel safe: state changes only after each backend call returns, and events are queued
    /// before they are returned. A call cancelled inside a backend call makes the next call
    /// [`CtBackend::reset`] the backend and start the tick again (with a higher position).
    async fn next(&mut self) -> CdcResult<Option<SourceEvent>> {
        if !self.started {
            return Err(CdcError::Config("next() before start()".into()));
        }
        if self.in_call {
            self.in_call = false;
            self.abandon_cycle().await;
            self.backend.reset().await?;
        }
        loop {
            if let Some(e) = self.queue.pop_front() {
                return Ok(Some(e));
            }
            let r = if self.cycle.is_some() {
                self.step().await
            } else {
                let wait = self.backoff.wait(self.stats.empty_polls);
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                self.tick(false).await.map(|_| ())
            };
            if let Err(e) = r {
                self.abandon_cycle().await;
                return Err(e);
            }
        }
    }

    /// Records that everything up to `position` (a checkpoint this source emitted) is durably
    /// applied. The source's progress does not depend on it: a restart resumes from what the
    /// connector persisted.
    async fn ack(&mut self, position: &Position) -> CdcResult<()> {
        let p = MssqlPosition::decode(position)?;
        if p.seq.is_some() || p.fingerprint != Some(self.fingerprint) {
            return Err(CdcError::BadPosition {
                reason: format!("{position} is not a checkpoint of this source"),
            });
        }
        if self.emitted.as_ref().is_none_or(|e| position > e) {
            return Err(CdcError::BadPosition {
                reason: format!("{position} is ahead of every checkpoint emitted"),
            });
        }
        if self.acked.as_ref().is_none_or(|a| position > a) {
            self.acked = Some(position.clone());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_order_and_round_trip() {
        let a = MssqlPosition::item(7, 0, 0);
        let b = MssqlPosition::item(7, 0, 1);
        let cp = MssqlPosition::checkpoint(7, 0, 42);
        let c = MssqlPosition::item(7, 1, 0);
        let d = MssqlPosition::item(8, 0, 0);
        let big = MssqlPosition::item(1 << 40, 0, 0);
        assert!(a < b && b < cp && cp < c && c < d && d < big);
        assert_eq!(
            MssqlPosition::decode(&cp).unwrap(),
            MssqlPosition {
                version: 7,
                cycle: 0,
                seq: None,
                fingerprint: Some(42)
            }
        );
        assert_eq!(MssqlPosition::decode(&b).unwrap().seq, Some(1));
        for bad in [vec![], vec![2; 21], vec![1; 20], vec![1; 30]] {
            assert!(matches!(
                MssqlPosition::decode(&Position::from_bytes(bad)),
                Err(CdcError::BadPosition { .. })
            ));
        }
    }

    #[test]
    fn backoff_is_the_originals_and_bounded() {
        let b = PollBackoff::default();
        assert_eq!(b.wait(0), Duration::ZERO);
        assert_eq!(b.wait(1), Duration::from_millis(10));
        assert_eq!(b.wait(7), Duration::from_millis(70));
        assert_eq!(b.wait(500), Duration::from_millis(5000));
        assert_eq!(b.wait(u32::MAX), Duration::from_millis(5000));
        let f = PollBackoff::Fixed(Duration::from_millis(100));
        assert_eq!(f.wait(3), Duration::from_millis(100));
        let c = PollBackoff::Custom(Arc::new(|n| Duration::from_secs(u64::from(n))));
        assert_eq!(c.wait(2), Duration::from_secs(2));
        assert_eq!(c.wait(u32::MAX), MAX_POLL_WAIT);
        assert_eq!(format!("{c:?}"), "Custom(..)");
    }

    #[test]
    fn fnv_is_stable() {
        // The published FNV-1a 64 test vector.
        let mut h = Fnv::new();
        h.write_raw(b"abc");
        assert_eq!(h.finish(), 0xe71f_a219_0541_574b);
        // Separated fields differ from their concatenation.
        let (mut a, mut b) = (Fnv::new(), Fnv::new());
        a.write(b"ab");
        a.write(b"c");
        b.write(b"a");
        b.write(b"bc");
        assert_ne!(a.finish(), b.finish());
    }
}
