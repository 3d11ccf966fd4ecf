//! [`MysqlChangeSource`]: a snapshot, then the binlog's row events.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use electric_core::cdc::{
    CdcError, CdcResult, ChangeBatch, ChangeItem, ChangeSource, Op, Position, Row, SourceEvent,
    TableName,
};
use futures_util::StreamExt;
use mysql_async::binlog::events::{Event, EventData, RowsEventData, TableMapEvent};
use mysql_async::binlog::row::BinlogRow;
use mysql_async::binlog::value::BinlogValue;
use mysql_async::prelude::Queryable;
use mysql_async::{BinlogStream, BinlogStreamRequest, Conn, Opts, Value as MyValue};

use crate::ddl::{classify, mentions, Ddl};
use crate::error::{map_err, map_err_right};
use crate::position::{file_name, split_file_name, BinlogPos};
use crate::schema::{load_schema, map_value, ColumnInfo, Origin, TableSchema};

/// The largest batch a source may be configured with.
pub const MAX_BATCH: usize = 100_000;
/// Transactions on other tables after which an empty checkpoint batch is offered anyway.
const IDLE_CHECKPOINT_EVERY: u64 = 1000;
/// MariaDB's `GTID_EVENT`, `ANNOTATE_ROWS`, `BINLOG_CHECKPOINT`, `GTID_LIST` (not known to
/// `mysql_common`).
const MARIA_GTID: u8 = 162;

/// What to do when a stored position's binlog file was purged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum HistoryLostPolicy {
    /// Snapshot every table again ([`SourceEvent::SnapshotStart`] with reason
    /// `"binlog purged"`), then stream from the new snapshot's position.
    #[default]
    Resnapshot,
    /// Fail [`ChangeSource::start`] with [`CdcError::HistoryLost`].
    Error,
}

/// Builds a [`MysqlChangeSource`].
#[derive(Clone, Debug)]
pub struct MysqlSourceBuilder {
    url: String,
    tables: Vec<String>,
    server_id: Option<u32>,
    max_batch: usize,
    heartbeat: Duration,
    name: Option<String>,
    history_lost: HistoryLostPolicy,
}

impl MysqlSourceBuilder {
    /// Captures table `schema.table` (the schema is the database). Call once per table.
    pub fn table(mut self, qualified: impl Into<String>) -> Self {
        self.tables.push(qualified.into());
        self
    }

    /// The replica `server_id` this source registers with; it must differ from the server's
    /// and from every other replica's (a second registration with the same id makes the server
    /// drop the first). Default: a random id in `2^30..2^31`.
    pub fn server_id(mut self, id: u32) -> Self {
        self.server_id = Some(id);
        self
    }

    /// At most this many changes per [`ChangeBatch`] (default 1,000; `1..=`[`MAX_BATCH`]).
    /// A bigger transaction arrives as several batches; only its last carries the checkpoint.
    /// Snapshot pages have the same size.
    pub fn max_batch(mut self, n: usize) -> Self {
        self.max_batch = n;
        self
    }

    /// How often the server sends a heartbeat when the binlog is idle (default 1 s, 0.1–60 s).
    /// No event for three periods (at least 5 s) means the connection is dead
    /// ([`CdcError::Unavailable`]).
    /// Heartbeats also carry the idle checkpoint (the position after transactions on other
    /// tables), so a restart does not re-read them.
    pub fn heartbeat(mut self, period: Duration) -> Self {
        self.heartbeat = period;
        self
    }

    /// The source's name for logs and checkpoints (default `mysql:<server_id>`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// What to do when the stored position's binlog was purged (default: re-snapshot).
    pub fn on_history_lost(mut self, policy: HistoryLostPolicy) -> Self {
        self.history_lost = policy;
        self
    }

    /// Validates the configuration (nothing is sent to the server yet).
    ///
    /// # Errors
    /// [`CdcError::Config`] for a bad URL, no tables, a table not written `schema.table`, a
    /// batch size or heartbeat out of range, or server id 0.
    pub fn build(self) -> CdcResult<MysqlChangeSource> {
        let opts = Opts::from_url(&self.url)
            .map_err(|e| CdcError::Config(format!("bad MariaDB URL: {e}")))?;
        if self.tables.is_empty() {
            return Err(CdcError::Config("no tables to capture".into()));
        }
        let mut tables = Vec::with_capacity(self.tables.len());
        for t in &self.tables {
            let table = parse_table(t)?;
            if tables.contains(&table) {
                return Err(CdcError::Config(format!("table {table} configured twice")));
            }
            tables.push(table);
        }
        if !(1..=MAX_BATCH).contains(&self.max_batch) {
            return Err(CdcError::Config(format!(
                "max_batch {} is not in 1..={MAX_BATCH}",
                self.max_batch
            )));
        }
        if !(Duration::from_millis(100)..=Duration::from_secs(60)).contains(&self.heartbeat) {
            return Err(CdcError::Config(format!(
                "heartbeat {:?} is not in 0.1–60 s",
                self.heartbeat
            )));
        }
        let server_id = match self.server_id {
            Some(0) => return Err(CdcError::Config("server_id 0 is not allowed".into())),
            Some(id) => id,
            None => random_server_id(),
        };
        Ok(MysqlChangeSource {
            name: self.name.unwrap_or_else(|| format!("mysql:{server_id}")),
            opts,
            tables,
            server_id,
            max_batch: self.max_batch,
            heartbeat: self.heartbeat,
            history_lost: self.history_lost,
            started: false,
            phase: Phase::Stopped,
            out: VecDeque::new(),
            schemas: Vec::new(),
            base: String::new(),
            file_seq: 0,
            tmap: HashMap::new(),
            stale: HashSet::new(),
            held: None,
            in_txn: false,
            standalone: false,
            txn_items: false,
            pending: Vec::new(),
            idle_ckpt: None,
            skipped: 0,
            checksum: true,
            fde_seen: false,
        })
    }
}

fn random_server_id() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    (1 << 30) | (h.finish() as u32 & ((1 << 30) - 1))
}

fn parse_table(t: &str) -> CdcResult<TableName> {
    let bad = || CdcError::Config(format!("table {t:?} is not schema.table"));
    let (s, n) = t.split_once('.').ok_or_else(bad)?;
    let ok = |x: &str| !x.is_empty() && x.len() <= 64 && !x.contains(['\0', '.']);
    if !ok(s) || !ok(n) {
        return Err(bad());
    }
    Ok(TableName::new(s, n))
}

fn quote(id: &str) -> String {
    format!("`{}`", id.replace('`', "``"))
}

/// A table's columns as one `TABLE_MAP` event describes them.
struct Mapped {
    idx: usize,
    tme: TableMapEvent<'static>,
    /// Per binlog column: its schema entry.
    cols: Vec<ColumnInfo>,
    /// Binlog column indices of the key.
    key: Vec<usize>,
}

struct SnapTable {
    idx: usize,
    last_key: Option<Vec<MyValue>>,
}

/// A snapshot page query in flight: it owns the connection, so a cancelled
/// [`next`](ChangeSource::next) leaves it running and the next call awaits the same result.
type Page = tokio::task::JoinHandle<(Conn, Result<Vec<mysql_async::Row>, mysql_async::Error>)>;

struct Snap {
    /// `None` while a page query holds it.
    conn: Option<Conn>,
    inflight: Option<Page>,
    at: BinlogPos,
    reason: Arc<str>,
    tables: VecDeque<usize>,
    current: Option<SnapTable>,
    ordinal: u64,
}

enum Phase {
    Stopped,
    Snapshot(Box<Snap>),
    Connect(BinlogPos),
    Stream(Box<BinlogStream>),
}

/// A change source on MariaDB's (or MySQL's) binary log, row events.
///
/// On [`start`](ChangeSource::start) it checks the server's settings and the user's rights,
/// loads each table's columns and primary key, and then either snapshots every table inside
/// one `START TRANSACTION WITH CONSISTENT SNAPSHOT` and streams from the binlog position that
/// snapshot matches, or resumes streaming at a stored position. See the crate docs for
/// settings, rights, the value mapping and delivery guarantees.
pub struct MysqlChangeSource {
    name: String,
    opts: Opts,
    tables: Vec<TableName>,
    server_id: u32,
    max_batch: usize,
    heartbeat: Duration,
    history_lost: HistoryLostPolicy,
    started: bool,
    phase: Phase,
    /// Events ready to hand out; bounded by one binlog event's rows (≤ the server's
    /// `max_allowed_packet`) plus one batch.
    out: VecDeque<SourceEvent>,
    schemas: Vec<TableSchema>,
    base: String,
    file_seq: u32,
    tmap: HashMap<u64, Option<Mapped>>,
    stale: HashSet<usize>,
    /// An event taken from the stream whose processing awaits a schema reload (kept here so a
    /// cancelled [`next`](ChangeSource::next) loses nothing).
    held: Option<Event>,
    in_txn: bool,
    standalone: bool,
    txn_items: bool,
    pending: Vec<ChangeItem>,
    idle_ckpt: Option<BinlogPos>,
    skipped: u64,
    /// The server checksums binlog events (`binlog_checksum` is not `NONE`).
    checksum: bool,
    /// A format description event was seen on this stream.
    fde_seen: bool,
}

impl std::fmt::Debug for MysqlChangeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MysqlChangeSource")
            .field("name", &self.name)
            .field("tables", &self.tables)
            .field("server_id", &self.server_id)
            .finish_non_exhaustive()
    }
}

enum Step {
    Continue,
    Reload(usize),
}

impl MysqlChangeSource {
    /// A builder for a source reading `url` (`mysql://user:password@host:port/db`).
    pub fn builder(url: impl Into<String>) -> MysqlSourceBuilder {
        MysqlSourceBuilder {
            url: url.into(),
            tables: Vec::new(),
            server_id: None,
            max_batch: 1000,
            heartbeat: Duration::from_secs(1),
            name: None,
            history_lost: HistoryLostPolicy::default(),
        }
    }

    /// The replica server id this source registers with.
    pub fn server_id(&self) -> u32 {
        self.server_id
    }

    /// The captured tables.
    pub fn tables(&self) -> &[TableName] {
        &self.tables
    }

    /// Decodes a position this source wrote into `(binlog file, offset)`: where streaming
    /// resumes. Needs a started source (the file's base name comes from the server).
    ///
    /// # Errors
    /// [`CdcError::BadPosition`] for foreign bytes.
    pub fn describe(&self, position: &Position) -> CdcResult<(String, u64)> {
        let p = BinlogPos::decode(position)?;
        Ok((file_name(&self.base, p.file_seq), p.offset))
    }

    async fn connect(&self) -> CdcResult<Conn> {
        Conn::new(self.opts.clone()).await.map_err(map_err)
    }

    async fn check_settings(&mut self, conn: &mut Conn) -> CdcResult<()> {
        async fn var(conn: &mut Conn, name: &str) -> CdcResult<Option<String>> {
            match conn
                .query_first::<MyValue, _>(format!("SELECT @@GLOBAL.{name}"))
                .await
            {
                Ok(v) => Ok(v.map(|v| match v {
                    MyValue::Bytes(b) => String::from_utf8_lossy(&b).into_owned(),
                    MyValue::Int(i) => i.to_string(),
                    MyValue::UInt(u) => u.to_string(),
                    other => format!("{other:?}"),
                })),
                // ER_UNKNOWN_SYSTEM_VARIABLE: this server version has no such setting.
                Err(mysql_async::Error::Server(e)) if e.code == 1193 => Ok(None),
                Err(e) => Err(map_err(e)),
            }
        }
        let need = |setting: &str, actual: Option<String>, ok: &[&str], needed: &str| {
            let a = actual.unwrap_or_default();
            if ok.iter().any(|o| a.eq_ignore_ascii_case(o)) {
                Ok(())
            } else {
                Err(CdcError::Setting {
                    setting: setting.into(),
                    actual: a,
                    needed: needed.into(),
                })
            }
        };
        need(
            "log_bin",
            var(conn, "log_bin").await?,
            &["1", "ON"],
            "ON (start mariadbd with --log-bin)",
        )?;
        need(
            "binlog_format",
            var(conn, "binlog_format").await?,
            &["ROW"],
            "ROW",
        )?;
        need(
            "binlog_row_image",
            var(conn, "binlog_row_image").await?,
            &["FULL"],
            "FULL",
        )?;
        if let Some(meta) = var(conn, "binlog_row_metadata").await? {
            need("binlog_row_metadata", Some(meta), &["FULL"], "FULL")?;
        }
        if let Some(c) = var(conn, "log_bin_compress").await? {
            need(
                "log_bin_compress",
                Some(c),
                &["0", "OFF"],
                "OFF (compressed row events are not decoded)",
            )?;
        }
        if let Some(o) = var(conn, "binlog_row_value_options").await? {
            need(
                "binlog_row_value_options",
                Some(o),
                &[""],
                "'' (partial JSON updates are not decoded)",
            )?;
        }
        self.checksum = var(conn, "binlog_checksum")
            .await?
            .is_none_or(|c| !c.eq_ignore_ascii_case("NONE"));
        let own = var(conn, "server_id").await?.unwrap_or_default();
        if own == self.server_id.to_string() {
            return Err(CdcError::Config(format!(
                "server_id {} is the server's own; choose another",
                self.server_id
            )));
        }
        Ok(())
    }

    /// `SHOW BINARY LOGS`: (sequence number, size) of every file, oldest first; sets `base`.
    async fn binary_logs(&mut self, conn: &mut Conn) -> CdcResult<Vec<(u32, u64)>> {
        let rows: Vec<mysql_async::Row> = conn
            .query("SHOW BINARY LOGS")
            .await
            .map_err(|e| map_err_right(e, "REPLICATION CLIENT (BINLOG MONITOR)"))?;
        let mut files = Vec::with_capacity(rows.len());
        for row in rows {
            let mut v = row.unwrap().into_iter();
            let name = match v.next() {
                Some(MyValue::Bytes(b)) => String::from_utf8_lossy(&b).into_owned(),
                _ => continue,
            };
            let size = match v.next() {
                Some(MyValue::UInt(u)) => u,
                Some(MyValue::Int(i)) => u64::try_from(i).unwrap_or(0),
                Some(MyValue::Bytes(b)) => String::from_utf8_lossy(&b).parse().unwrap_or(0),
                _ => 0,
            };
            let (base, seq) = split_file_name(&name)?;
            self.base = base;
            files.push((seq, size));
        }
        if files.is_empty() {
            return Err(CdcError::Setting {
                setting: "log_bin".into(),
                actual: "no binary logs".into(),
                needed: "ON".into(),
            });
        }
        Ok(files)
    }

    /// Registers as a replica and reads the first event, so a missing `REPLICATION SLAVE`
    /// right fails `start` rather than the first `next` after a long snapshot.
    async fn probe_replication(&self, file: &str, offset: u64) -> CdcResult<()> {
        let right = "REPLICATION SLAVE";
        let mut conn = self.connect().await?;
        conn.query_drop("SET @mariadb_slave_capability = 4")
            .await
            .map_err(map_err)?;
        let req = BinlogStreamRequest::new(self.server_id ^ 0x8000_0000)
            .with_filename(file.as_bytes())
            .with_pos(offset)
            .with_non_blocking();
        let mut stream = conn
            .get_binlog_stream(req)
            .await
            .map_err(|e| map_err_right(e, right))?;
        if let Some(Err(e)) = stream.next().await {
            return Err(map_err_right(e, right));
        }
        let _ = stream.close().await;
        Ok(())
    }

    async fn begin_snapshot(&mut self, mut conn: Conn, reason: &str) -> CdcResult<()> {
        let q = async {
            conn.query_drop("SET NAMES utf8mb4").await?;
            conn.query_drop("SET time_zone = '+00:00'").await?;
            conn.query_drop("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                .await?;
            conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
                .await?;
            conn.query::<(String, String), _>("SHOW STATUS LIKE 'binlog_snapshot_%'")
                .await
        };
        let status = q.await.map_err(map_err)?;
        let get = |k: &str| {
            status
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.clone())
        };
        let (Some(file), Some(pos)) =
            (get("binlog_snapshot_file"), get("binlog_snapshot_position"))
        else {
            return Err(CdcError::Setting {
                setting: "binlog_snapshot_file".into(),
                actual: "absent".into(),
                needed: "MariaDB (START TRANSACTION WITH CONSISTENT SNAPSHOT reports it)".into(),
            });
        };
        let (_, file_seq) = split_file_name(&file)?;
        let offset = pos.parse::<u64>().map_err(|_| CdcError::Malformed {
            what: "binlog_snapshot_position",
            reason: format!("{pos:?}"),
        })?;
        tracing::info!(source = %self.name, %file, offset, reason, "snapshot starts");
        self.phase = Phase::Snapshot(Box::new(Snap {
            conn: Some(conn),
            inflight: None,
            at: BinlogPos {
                file_seq,
                offset,
                sub: 0,
            },
            reason: reason.into(),
            tables: (0..self.tables.len()).collect(),
            current: None,
            ordinal: 0,
        }));
        Ok(())
    }

    fn row_of(&self, schema: &TableSchema, cols: &[Arc<str>], vals: Vec<MyValue>) -> (Row, Row) {
        let mut row = Row::default();
        for (name, v) in cols.iter().zip(vals) {
            let info = schema.column(name).cloned();
            let info = info.unwrap_or_else(|| ColumnInfo::unknown(name.clone()));
            row.columns
                .push((name.clone(), map_value(&info, v, Origin::Snapshot)));
        }
        let key = Row {
            columns: schema
                .key
                .iter()
                .filter_map(|k| row.get(k).map(|v| (k.clone(), v.clone())))
                .collect(),
        };
        (key, row)
    }

    async fn snapshot_step(&mut self) -> CdcResult<()> {
        let Phase::Snapshot(snap) = &mut self.phase else {
            return Ok(());
        };
        let Some(cur) = &snap.current else {
            if let Some(idx) = snap.tables.pop_front() {
                snap.current = Some(SnapTable {
                    idx,
                    last_key: None,
                });
                self.out.push_back(SourceEvent::SnapshotStart {
                    table: self.tables[idx].clone(),
                    reason: snap.reason.clone(),
                });
                return Ok(());
            }
            // The snapshot was read only: ending the session ends its transaction. Closing
            // runs on its own so this step has no await (and nothing to lose if cancelled).
            if let Some(conn) = snap.conn.take() {
                tokio::spawn(async move {
                    let _ = conn.disconnect().await;
                });
            }
            let at = BinlogPos {
                sub: u64::MAX,
                ..snap.at
            };
            self.out.push_back(SourceEvent::Changes(ChangeBatch {
                items: Vec::new(),
                checkpoint: Some(at.encode()),
            }));
            self.file_seq = at.file_seq;
            self.phase = Phase::Connect(at);
            return Ok(());
        };
        let schema = &self.schemas[cur.idx];
        let cols: Vec<Arc<str>> = schema.columns.iter().map(|c| c.name.clone()).collect();
        let key_pos: Vec<usize> = schema
            .key
            .iter()
            .filter_map(|k| cols.iter().position(|c| c == k))
            .collect();
        let mut sql = format!(
            "SELECT {} FROM {}.{}",
            cols.iter().map(|c| quote(c)).collect::<Vec<_>>().join(", "),
            quote(&schema.table.schema),
            quote(&schema.table.name)
        );
        let mut params: Vec<MyValue> = Vec::new();
        if let Some(last) = &cur.last_key {
            // (k1 > ?) OR (k1 = ? AND k2 > ?) OR …: keyset pagination the optimizer ranges.
            let mut ors = Vec::new();
            for i in 0..schema.key.len() {
                let mut ands = Vec::new();
                for (j, k) in schema.key.iter().enumerate().take(i) {
                    ands.push(format!("{} = ?", quote(k)));
                    params.push(last[j].clone());
                }
                ands.push(format!("{} > ?", quote(&schema.key[i])));
                params.push(last[i].clone());
                ors.push(format!("({})", ands.join(" AND ")));
            }
            sql.push_str(" WHERE ");
            sql.push_str(&ors.join(" OR "));
        }
        sql.push_str(&format!(
            " ORDER BY {} LIMIT {}",
            schema
                .key
                .iter()
                .map(|k| quote(k))
                .collect::<Vec<_>>()
                .join(", "),
            self.max_batch
        ));
        if snap.inflight.is_none() {
            let Some(mut conn) = snap.conn.take() else {
                return Err(CdcError::Unavailable(
                    "the snapshot connection was lost".into(),
                ));
            };
            snap.inflight = Some(tokio::spawn(async move {
                let res = conn.exec(sql, params).await;
                (conn, res)
            }));
        }
        let Some(page) = snap.inflight.as_mut() else {
            return Ok(());
        };
        let joined = page.await;
        snap.inflight = None;
        let (conn, res) =
            joined.map_err(|e| CdcError::Unavailable(format!("snapshot query task: {e}")))?;
        snap.conn = Some(conn);
        let rows = res.map_err(|e| map_err_right(e, "SELECT"))?;
        let full = rows.len() >= self.max_batch;
        let table = schema.table.clone();
        let mut items = Vec::with_capacity(rows.len());
        let mut last_key = None;
        let mut ordinal = snap.ordinal;
        let at = snap.at;
        for row in rows {
            let vals = row.unwrap();
            last_key = Some(key_pos.iter().map(|&i| vals[i].clone()).collect::<Vec<_>>());
            let (key, new) = self.row_of(schema, &cols, vals);
            items.push(ChangeItem {
                position: BinlogPos { sub: ordinal, ..at }.encode(),
                table: table.clone(),
                op: Op::Insert,
                key,
                new: Some(new),
                old: None,
            });
            ordinal += 1;
        }
        let Phase::Snapshot(snap) = &mut self.phase else {
            return Ok(());
        };
        snap.ordinal = ordinal;
        if !items.is_empty() {
            self.out.push_back(SourceEvent::Changes(ChangeBatch {
                items,
                checkpoint: None,
            }));
        }
        if full {
            if let Some(cur) = &mut snap.current {
                cur.last_key = last_key;
            }
        } else {
            snap.current = None;
            self.out.push_back(SourceEvent::SnapshotEnd { table });
        }
        Ok(())
    }

    async fn open_stream(&mut self, at: BinlogPos) -> CdcResult<()> {
        let mut conn = self.connect().await?;
        let period_ns = u64::try_from(self.heartbeat.as_nanos()).unwrap_or(u64::MAX);
        conn.query_drop("SET @mariadb_slave_capability = 4")
            .await
            .map_err(map_err)?;
        conn.query_drop(format!("SET @master_heartbeat_period = {period_ns}"))
            .await
            .map_err(map_err)?;
        let file = file_name(&self.base, at.file_seq);
        let req = BinlogStreamRequest::new(self.server_id)
            .with_filename(file.as_bytes())
            .with_pos(at.offset);
        let stream = conn
            .get_binlog_stream(req)
            .await
            .map_err(|e| map_err_right(e, "REPLICATION SLAVE"))?;
        tracing::info!(source = %self.name, %file, offset = at.offset, "binlog stream opened");
        self.file_seq = at.file_seq;
        self.fde_seen = false;
        self.in_txn = false;
        self.standalone = false;
        self.txn_items = false;
        self.tmap.clear();
        self.phase = Phase::Stream(Box::new(stream));
        Ok(())
    }

    fn table_index(&self, schema: &str, name: &str) -> Option<usize> {
        self.tables
            .iter()
            .position(|t| &*t.schema == schema && &*t.name == name)
    }

    fn push_item(&mut self, item: ChangeItem) {
        self.pending.push(item);
        self.txn_items = true;
        if self.pending.len() >= self.max_batch {
            let items = std::mem::take(&mut self.pending);
            self.out.push_back(SourceEvent::Changes(ChangeBatch {
                items,
                checkpoint: None,
            }));
        }
    }

    fn end_txn(&mut self, end: u64) {
        let pos = BinlogPos {
            file_seq: self.file_seq,
            offset: end,
            sub: 0,
        };
        if self.txn_items || !self.pending.is_empty() {
            let items = std::mem::take(&mut self.pending);
            self.out.push_back(SourceEvent::Changes(ChangeBatch {
                items,
                checkpoint: Some(pos.encode()),
            }));
            self.idle_ckpt = None;
            self.skipped = 0;
        } else {
            self.idle_ckpt = Some(pos);
            self.skipped += 1;
            if self.skipped >= IDLE_CHECKPOINT_EVERY {
                self.flush_idle();
            }
        }
        self.in_txn = false;
        self.standalone = false;
        self.txn_items = false;
        // Every transaction maps the tables it writes before its rows events, so the
        // mapping stays bounded by the tables of one transaction.
        self.tmap.clear();
    }

    fn flush_idle(&mut self) {
        if self.in_txn {
            return;
        }
        if let Some(pos) = self.idle_ckpt.take() {
            self.out.push_back(SourceEvent::Changes(ChangeBatch {
                items: Vec::new(),
                checkpoint: Some(pos.encode()),
            }));
        }
        self.skipped = 0;
    }

    fn here(&self, end: u64) -> String {
        format!("{}:{end}", file_name(&self.base, self.file_seq))
    }

    /// Builds the mapping of a captured table's `TABLE_MAP`; `None` when its schema must be
    /// reloaded first.
    fn map_table(&self, idx: usize, tme: &TableMapEvent<'_>) -> CdcResult<Option<Mapped>> {
        let schema = &self.schemas[idx];
        let mut names: Option<Vec<Arc<str>>> = None;
        for field in tme.iter_optional_meta() {
            if let Ok(mysql_async::binlog::events::OptionalMetadataField::ColumnName(n)) = field {
                let v: Vec<Arc<str>> = n
                    .iter_names()
                    .filter_map(Result::ok)
                    .map(|c| Arc::from(c.name().as_ref()))
                    .collect();
                names = Some(v);
            }
        }
        let count = usize::try_from(tme.columns_count()).unwrap_or(usize::MAX);
        let names = match names {
            Some(n) if n.len() == count => n,
            // No column names in the binlog (binlog_row_metadata below FULL, or an older
            // server): information_schema's, which must have as many columns.
            _ => {
                if schema.columns.len() != count {
                    return if self.stale.contains(&idx) {
                        Ok(None)
                    } else {
                        Err(CdcError::Table {
                            table: schema.table.clone(),
                            reason: format!(
                                "the binlog has {count} columns, information_schema {}; \
                                 without binlog_row_metadata=FULL they cannot be matched",
                                schema.columns.len()
                            ),
                        })
                    };
                }
                schema.columns.iter().map(|c| c.name.clone()).collect()
            }
        };
        let mismatch =
            schema.columns.len() != names.len() || names.iter().any(|n| schema.column(n).is_none());
        if mismatch || self.stale.contains(&idx) {
            return Ok(None);
        }
        let cols: Vec<ColumnInfo> = names
            .iter()
            .map(|n| {
                schema
                    .column(n)
                    .cloned()
                    .unwrap_or_else(|| ColumnInfo::unknown(n.clone()))
            })
            .collect();
        let mut key = Vec::with_capacity(schema.key.len());
        for k in &schema.key {
            match names.iter().position(|n| n == k) {
                Some(i) => key.push(i),
                None => {
                    return Err(CdcError::Table {
                        table: schema.table.clone(),
                        reason: format!("primary-key column {k} is not in the binlog's row"),
                    })
                }
            }
        }
        Ok(Some(Mapped {
            idx,
            tme: tme.clone().into_owned(),
            cols,
            key,
        }))
    }

    fn binlog_row(m: &Mapped, present: &[usize], row: &BinlogRow) -> CdcResult<Row> {
        let mut out = Row::default();
        for (k, &col) in present.iter().enumerate() {
            let Some(info) = m.cols.get(col) else {
                continue;
            };
            let v = match row.as_ref(k) {
                Some(BinlogValue::Value(v)) => map_value(info, v.clone(), Origin::Binlog),
                Some(BinlogValue::Jsonb(j)) => match j.clone().parse() {
                    Ok(dom) => electric_core::cdc::Value::Json(serde_json::Value::from(dom)),
                    Err(e) => {
                        return Err(CdcError::Malformed {
                            what: "binlog JSON value",
                            reason: e.to_string(),
                        })
                    }
                },
                Some(BinlogValue::JsonDiff(_)) => {
                    return Err(CdcError::Setting {
                        setting: "binlog_row_value_options".into(),
                        actual: "PARTIAL_JSON".into(),
                        needed: "''".into(),
                    })
                }
                None => continue,
            };
            out.columns.push((info.name.clone(), v));
        }
        Ok(out)
    }

    fn key_of(m: &Mapped, row: &Row) -> Row {
        Row {
            columns: m
                .key
                .iter()
                .filter_map(|&i| {
                    let name = &m.cols[i].name;
                    row.get(name).map(|v| (name.clone(), v.clone()))
                })
                .collect(),
        }
    }

    fn rows_event(&mut self, re: &RowsEventData<'_>, end: u64) -> CdcResult<()> {
        let Some(Some(m)) = self.tmap.get(&re.table_id()) else {
            return Ok(());
        };
        let table = self.tables[m.idx].clone();
        let before: Vec<usize> = re
            .columns_before_image()
            .map(|b| b.iter_ones().collect())
            .unwrap_or_default();
        let after: Vec<usize> = re
            .columns_after_image()
            .map(|b| b.iter_ones().collect())
            .unwrap_or_default();
        let mut items = Vec::new();
        for (i, r) in re.rows(&m.tme).enumerate() {
            let (b, a) = r.map_err(|e| CdcError::Malformed {
                what: "binlog row",
                reason: e.to_string(),
            })?;
            let old = b.map(|b| Self::binlog_row(m, &before, &b)).transpose()?;
            let new = a.map(|a| Self::binlog_row(m, &after, &a)).transpose()?;
            let pos = |half: u64| {
                BinlogPos {
                    file_seq: self.file_seq,
                    offset: end,
                    sub: (i as u64) * 2 + half,
                }
                .encode()
            };
            match (old, new) {
                (None, Some(new)) => items.push(ChangeItem {
                    position: pos(0),
                    table: table.clone(),
                    op: Op::Insert,
                    key: Self::key_of(m, &new),
                    new: Some(new),
                    old: None,
                }),
                (Some(old), None) => items.push(ChangeItem {
                    position: pos(0),
                    table: table.clone(),
                    op: Op::Delete,
                    key: Self::key_of(m, &old),
                    new: None,
                    old: Some(old),
                }),
                (Some(old), Some(new)) => {
                    let old_key = Self::key_of(m, &old);
                    let new_key = Self::key_of(m, &new);
                    if old_key.columns.len() == m.key.len() && old_key != new_key {
                        // The primary key changed: the old row is gone, a new one exists.
                        items.push(ChangeItem {
                            position: pos(0),
                            table: table.clone(),
                            op: Op::Delete,
                            key: old_key,
                            new: None,
                            old: Some(old),
                        });
                        items.push(ChangeItem {
                            position: pos(1),
                            table: table.clone(),
                            op: Op::Insert,
                            key: new_key,
                            new: Some(new),
                            old: None,
                        });
                    } else {
                        items.push(ChangeItem {
                            position: pos(0),
                            table: table.clone(),
                            op: Op::Update,
                            key: new_key,
                            new: Some(new),
                            old: Some(old),
                        });
                    }
                }
                (None, None) => {}
            }
        }
        for item in items {
            self.push_item(item);
        }
        Ok(())
    }

    fn query_event(&mut self, sql: &str, schema: &str, end: u64) -> CdcResult<()> {
        let head = sql.trim_start();
        let word = head
            .split(|c: char| !c.is_ascii_alphabetic())
            .next()
            .unwrap_or("");
        if word.eq_ignore_ascii_case("BEGIN") {
            self.in_txn = true;
            self.standalone = false;
            return Ok(());
        }
        if word.eq_ignore_ascii_case("COMMIT") || word.eq_ignore_ascii_case("ROLLBACK") {
            self.end_txn(end);
            return Ok(());
        }
        if word.eq_ignore_ascii_case("XA") {
            return Ok(());
        }
        let captured = |s: &str, t: &str| self.table_index(s, t);
        match classify(sql, schema) {
            Ddl::Drop(list) => {
                if let Some(i) = list.iter().find_map(|(s, t)| captured(s, t)) {
                    return Err(CdcError::Table {
                        table: self.tables[i].clone(),
                        reason: format!("dropped at binlog {}", self.here(end)),
                    });
                }
            }
            Ddl::Rename(pairs) => {
                if let Some((i, to)) = pairs
                    .iter()
                    .find_map(|((s, t), to)| captured(s, t).map(|i| (i, to)))
                {
                    return Err(CdcError::Table {
                        table: self.tables[i].clone(),
                        reason: format!(
                            "renamed to {}.{} at binlog {}; configure the new name",
                            to.0,
                            to.1,
                            self.here(end)
                        ),
                    });
                }
            }
            Ddl::Truncate((s, t)) | Ddl::Replace((s, t)) => {
                if let Some(i) = captured(&s, &t) {
                    // TRUNCATE (and CREATE OR REPLACE) writes no row events for the rows it
                    // removes: at this point the table is empty. Rows a CREATE … SELECT
                    // fills in follow as row events.
                    let table = self.tables[i].clone();
                    let reason = if word.eq_ignore_ascii_case("TRUNCATE") {
                        "truncate"
                    } else {
                        self.stale.insert(i);
                        "create or replace"
                    };
                    self.flush_pending();
                    self.out.push_back(SourceEvent::SnapshotStart {
                        table: table.clone(),
                        reason: reason.into(),
                    });
                    self.out.push_back(SourceEvent::SnapshotEnd { table });
                    self.txn_items = true;
                }
            }
            Ddl::Alter((s, t)) => {
                if let Some(i) = captured(&s, &t) {
                    self.stale.insert(i);
                }
            }
            Ddl::Dml => {
                if let Some(t) = self.tables.iter().find(|t| mentions(sql, &t.name)).cloned() {
                    return Err(CdcError::Setting {
                        setting: "binlog_format".into(),
                        actual: format!(
                            "STATEMENT in a session (a statement on {t} at binlog {})",
                            self.here(end)
                        ),
                        needed: "ROW in every session".into(),
                    });
                }
            }
            Ddl::Other => {}
        }
        if !self.in_txn || self.standalone {
            self.end_txn(end);
        }
        Ok(())
    }

    fn flush_pending(&mut self) {
        if !self.pending.is_empty() {
            let items = std::mem::take(&mut self.pending);
            self.out.push_back(SourceEvent::Changes(ChangeBatch {
                items,
                checkpoint: None,
            }));
        }
    }

    fn process(&mut self, ev: &Event) -> CdcResult<Step> {
        let hdr = ev.header();
        let end = u64::from(hdr.log_pos());
        if hdr.event_type_raw() == MARIA_GTID {
            let flags = ev.data().get(12).copied().unwrap_or(0);
            self.in_txn = true;
            // FL_STANDALONE: a statement without BEGIN/COMMIT (DDL).
            self.standalone = flags & 1 != 0;
            return Ok(Step::Continue);
        }
        let data = ev.read_data().map_err(|e| CdcError::Malformed {
            what: "binlog event",
            reason: e.to_string(),
        })?;
        match data {
            Some(EventData::RotateEvent(r)) => {
                // The server's first (fake) rotate comes before the format description, so
                // the reader has not stripped its checksum: the name's last 4 bytes.
                let raw = r.name_raw();
                let raw = if !self.fde_seen && self.checksum && raw.len() > 4 {
                    &raw[..raw.len() - 4]
                } else {
                    raw
                };
                let name = String::from_utf8_lossy(raw);
                let (base, seq) = split_file_name(&name)?;
                self.base = base;
                self.file_seq = seq;
            }
            Some(EventData::TableMapEvent(tme)) => {
                let idx = self.table_index(&tme.database_name(), &tme.table_name());
                let mapped = match idx {
                    Some(idx) => match self.map_table(idx, &tme)? {
                        Some(m) => Some(m),
                        None => return Ok(Step::Reload(idx)),
                    },
                    None => None,
                };
                self.tmap.insert(tme.table_id(), mapped);
            }
            Some(EventData::RowsEvent(re)) => self.rows_event(&re, end)?,
            Some(EventData::XidEvent(_)) => self.end_txn(end),
            Some(EventData::QueryEvent(q)) => {
                let sql = q.query().into_owned();
                let schema = q.schema().into_owned();
                self.query_event(&sql, &schema, end)?;
            }
            Some(EventData::HeartbeatEvent) => self.flush_idle(),
            Some(EventData::FormatDescriptionEvent(_)) => self.fde_seen = true,
            _ => {}
        }
        Ok(Step::Continue)
    }

    async fn reload(&mut self, idx: usize) -> CdcResult<()> {
        let mut conn = self.connect().await?;
        let schema = load_schema(&mut conn, &self.tables[idx]).await;
        let _ = conn.disconnect().await;
        match schema {
            Ok(s) => {
                tracing::info!(source = %self.name, table = %s.table, "schema reloaded");
                self.schemas[idx] = s;
                self.stale.remove(&idx);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    async fn stream_step(&mut self) -> CdcResult<()> {
        let ev = match self.held.take() {
            Some(ev) => ev,
            None => {
                let Phase::Stream(stream) = &mut self.phase else {
                    return Ok(());
                };
                // Three heartbeats, at least 5 s: a busy 2-core host delays heartbeats.
                let wait = (self.heartbeat * 3).max(Duration::from_secs(5));
                match tokio::time::timeout(wait, stream.next()).await {
                    Err(_) => {
                        return Err(CdcError::Unavailable(format!(
                            "no binlog event or heartbeat for {wait:?}"
                        )))
                    }
                    Ok(None) => {
                        return Err(CdcError::Unavailable(
                            "the server ended the binlog stream".into(),
                        ))
                    }
                    Ok(Some(Err(e))) => return Err(map_err(e)),
                    Ok(Some(Ok(ev))) => ev,
                }
            }
        };
        match self.process(&ev)? {
            Step::Continue => Ok(()),
            Step::Reload(idx) => {
                self.held = Some(ev);
                self.reload(idx).await?;
                let ev = self.held.take().expect("held above");
                match self.process(&ev)? {
                    Step::Continue => Ok(()),
                    Step::Reload(_) => {
                        // The binlog's columns still differ from information_schema's: a later
                        // DDL already changed the table again. Map what the binlog names.
                        self.stale.remove(&idx);
                        let Some(EventData::TableMapEvent(tme)) = ev.read_data().ok().flatten()
                        else {
                            return Ok(());
                        };
                        let m = self.map_table_lenient(idx, &tme)?;
                        self.tmap.insert(tme.table_id(), Some(m));
                        Ok(())
                    }
                }
            }
        }
    }

    fn map_table_lenient(&self, idx: usize, tme: &TableMapEvent<'_>) -> CdcResult<Mapped> {
        // Same as map_table, but columns unknown to information_schema are mapped by kind.
        let schema = &self.schemas[idx];
        let mut names: Vec<Arc<str>> = Vec::new();
        for field in tme.iter_optional_meta() {
            if let Ok(mysql_async::binlog::events::OptionalMetadataField::ColumnName(n)) = field {
                names = n
                    .iter_names()
                    .filter_map(Result::ok)
                    .map(|c| Arc::from(c.name().as_ref()))
                    .collect();
            }
        }
        let count = usize::try_from(tme.columns_count()).unwrap_or(usize::MAX);
        if names.len() != count {
            return Err(CdcError::Table {
                table: schema.table.clone(),
                reason: "the binlog's columns do not match information_schema's".into(),
            });
        }
        let cols = names
            .iter()
            .map(|n| {
                schema
                    .column(n)
                    .cloned()
                    .unwrap_or_else(|| ColumnInfo::unknown(n.clone()))
            })
            .collect();
        let mut key = Vec::new();
        for k in &schema.key {
            key.push(
                names
                    .iter()
                    .position(|n| n == k)
                    .ok_or_else(|| CdcError::Table {
                        table: schema.table.clone(),
                        reason: format!("primary-key column {k} is not in the binlog's row"),
                    })?,
            );
        }
        Ok(Mapped {
            idx,
            tme: tme.clone().into_owned(),
            cols,
            key,
        })
    }

    async fn step(&mut self) -> CdcResult<()> {
        match &self.phase {
            Phase::Stopped => Err(CdcError::Closed),
            Phase::Snapshot(_) => self.snapshot_step().await,
            Phase::Connect(at) => {
                let at = *at;
                self.open_stream(at).await
            }
            Phase::Stream(_) => self.stream_step().await,
        }
    }

    async fn start_inner(&mut self, from: Option<Position>) -> CdcResult<()> {
        let from = from.as_ref().map(BinlogPos::decode).transpose()?;
        let mut conn = self.connect().await?;
        self.check_settings(&mut conn).await?;
        let files = self.binary_logs(&mut conn).await?;
        let mut schemas = Vec::with_capacity(self.tables.len());
        for t in &self.tables {
            schemas.push(load_schema(&mut conn, t).await?);
        }
        self.schemas = schemas;
        let (last_seq, last_size) = *files.last().expect("checked non-empty");
        self.probe_replication(&file_name(&self.base, last_seq), last_size.max(4))
            .await?;
        match from {
            None => self.begin_snapshot(conn, "initial").await,
            Some(p) => {
                let first = files[0].0;
                let known = files.iter().find(|(s, _)| *s == p.file_seq);
                if p.file_seq < first || (known.is_none() && p.file_seq <= last_seq) {
                    let what = format!(
                        "binlog {} was purged (oldest is {})",
                        file_name(&self.base, p.file_seq),
                        file_name(&self.base, first)
                    );
                    return match self.history_lost {
                        HistoryLostPolicy::Error => Err(CdcError::HistoryLost(what)),
                        HistoryLostPolicy::Resnapshot => {
                            tracing::warn!(source = %self.name, "{what}; snapshotting again");
                            self.begin_snapshot(conn, "binlog purged").await
                        }
                    };
                }
                match known {
                    Some((_, size)) if p.offset <= *size => {}
                    _ => {
                        return Err(CdcError::BadPosition {
                            reason: format!(
                                "{}:{} is beyond this server's binlog (written by another server?)",
                                file_name(&self.base, p.file_seq),
                                p.offset
                            ),
                        })
                    }
                }
                let _ = conn.disconnect().await;
                self.file_seq = p.file_seq;
                self.phase = Phase::Connect(p);
                Ok(())
            }
        }
    }
}

#[async_trait]
impl ChangeSource for MysqlChangeSource {
    fn name(&self) -> &str {
        &self.name
    }

    /// Checks settings and rights, loads the tables, then snapshots (`from` = `None`) or
    /// prepares to resume at `from`. Calling it again restarts the source: after a
    /// [`CdcError::Unavailable`], call it with the last persisted checkpoint.
    async fn start(&mut self, from: Option<Position>) -> CdcResult<()> {
        self.phase = Phase::Stopped;
        self.out.clear();
        self.pending.clear();
        self.held = None;
        self.tmap.clear();
        self.stale.clear();
        self.idle_ckpt = None;
        self.skipped = 0;
        self.in_txn = false;
        self.txn_items = false;
        self.started = true;
        self.start_inner(from).await
    }

    /// The next event. After an error the source is stopped (`Err(Closed)` until `start`).
    async fn next(&mut self) -> CdcResult<Option<SourceEvent>> {
        if !self.started {
            return Err(CdcError::Config("next called before start".into()));
        }
        loop {
            if let Some(e) = self.out.pop_front() {
                return Ok(Some(e));
            }
            if let Err(e) = self.step().await {
                if !matches!(e, CdcError::Closed) {
                    tracing::warn!(source = %self.name, error = %e, "source stopped");
                }
                self.phase = Phase::Stopped;
                self.held = None;
                return Err(e);
            }
        }
    }

    /// Nothing to release on the server (binlog retention is the server's
    /// `binlog_expire_logs_seconds`); checks that the position is one of ours.
    async fn ack(&mut self, position: &Position) -> CdcResult<()> {
        BinlogPos::decode(position).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_is_validated() {
        let b = || MysqlChangeSource::builder("mysql://root@127.0.0.1:3306/test");
        assert!(matches!(b().build(), Err(CdcError::Config(_))));
        assert!(matches!(
            b().table("nodot").build(),
            Err(CdcError::Config(_))
        ));
        assert!(matches!(
            b().table("a.b.c").build(),
            Err(CdcError::Config(_))
        ));
        assert!(matches!(
            b().table("a.b").table("a.b").build(),
            Err(CdcError::Config(_))
        ));
        assert!(matches!(
            b().table("a.b").max_batch(0).build(),
            Err(CdcError::Config(_))
        ));
        assert!(matches!(
            b().table("a.b").server_id(0).build(),
            Err(CdcError::Config(_))
        ));
        assert!(matches!(
            MysqlChangeSource::builder("http://x").table("a.b").build(),
            Err(CdcError::Config(_))
        ));
        let s = b().table("test.t").server_id(77).build().unwrap();
        assert_eq!(s.server_id(), 77);
        assert_eq!(s.name(), "mysql:77");
        let r = b().table("test.t").build().unwrap();
        assert!(r.server_id() >= 1 << 30);
    }

    #[test]
    fn futures_are_send() {
        fn is_send<T: Send>(_: &T) {}
        let mut s = MysqlChangeSource::builder("mysql://root@127.0.0.1/test")
            .table("test.t")
            .build()
            .unwrap();
        is_send(&s.start(None));
        is_send(&s.next());
        let _: Box<dyn ChangeSource> = Box::new(s);
    }
}
