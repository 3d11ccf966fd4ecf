//! `electric cdc`: change data capture from a database into a section's documents.
//!
//! - `electric cdc demo` creates its own table, writes inserts, updates and deletes at a rate,
//!   runs the [`Connector`] into a section and N replicas, and reports whether every replica
//!   equals the table (exit status 1 when not).
//! - `electric cdc bench` measures source commit → document committed in the store and its
//!   delta seen by a subscriber, at a paced rate and at the highest sustained rate, beside the
//!   raw source alone (no store), so the cost of each stage is visible.
//! - `electric cdc connector` runs one connector until it is stopped (the crash test kills it).
//!
//! Every backend ([`CdcBackend`]: PostgreSQL, MariaDB/MySQL, or the embedded memory database)
//! holds the same table: `id BIGINT PRIMARY KEY, counter BIGINT, val TEXT, ts_us BIGINT`.
//! `counter` starts at 0 on insert and is bumped by every update; `ts_us` is the writer's wall
//! clock (µs since the Unix epoch) taken just before the statement is sent, so a lag is measured
//! from before the source's commit (the commit's own time is included). Documents get every
//! column as a member plus `applied`, which the mapping bumps each time it applies a change to
//! the document: `applied == counter + 1` for every document means no change was applied twice
//! and none was lost.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, ensure, Context};
use async_trait::async_trait;
use clap::{Args, Subcommand};
use electric::cdc::connector::{JsonDoc, MapError, TableMapping};
use electric::cdc::memory::{row as mem_row, MemoryDatabase, Txn};
use electric::cdc::{
    Applied, ChangeSource, Checkpoints, Connector, FileCheckpoints, MemoryCheckpoints, Row,
    SourceEvent, TableName, Value,
};
use electric::redis::RedisStore;
use electric::store::{Store, SubscriptionEvent};
use electric::sync::SyncService;
use electric::{DataManager, MemoryStore};
use electric_postgres::{PgChangeSource, PgSourceConfig, TableConfig};
use futures_util::StreamExt;
use mysql_async::prelude::Queryable;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::{json, Value as Json};
use tokio_util::sync::CancellationToken;

/// The partition every CDC section lives in.
pub const PARTITION: &str = "cdc";
/// Lag samples kept per measurement; later samples are counted but not kept (the percentiles
/// then describe the first `MAX_SAMPLES`).
const MAX_SAMPLES: usize = 2_000_000;

/// `electric cdc …`.
#[derive(Args, Debug)]
pub struct CdcArgs {
    #[command(subcommand)]
    command: CdcCommand,
}

#[derive(Subcommand, Debug)]
enum CdcCommand {
    /// Create a table, write inserts, updates and deletes at a rate, capture them into a section
    /// and N replicas, and check that every replica equals the table.
    Demo(DemoArgs),
    /// Measure source commit → document committed in the store and delta seen by a subscriber
    /// (paced latency, sustained throughput), beside the raw source alone.
    Bench(BenchArgs),
    /// Run one connector (table → section) until stopped; resumes from its checkpoint.
    Connector(ConnectorArgs),
}

/// Where the table lives and where documents go.
#[derive(Args, Debug, Clone)]
struct Backends {
    /// PostgreSQL (wal_level=logical): `postgres://user@host:port/db`.
    #[arg(long, value_name = "URL", conflicts_with = "mysql")]
    pg: Option<String>,
    /// MariaDB/MySQL (log_bin, ROW format, FULL row image and metadata): `mysql://root@host/db`.
    #[arg(long, value_name = "URL")]
    mysql: Option<String>,
    /// Redis for the documents (default: the embedded store).
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
}

/// Options of `electric cdc demo`.
#[derive(Args, Debug)]
#[command(
    after_help = "With no --pg/--mysql the embedded memory database is the source; with no \
--redis the embedded store holds the documents (no server needed).\n\nExit status: 0 when every \
replica equals the table and no change was applied twice; 1 when not; 2 for bad arguments or an \
error of the demo itself."
)]
pub struct DemoArgs {
    #[command(flatten)]
    backends: Backends,
    /// Changes written per second (all writers together).
    #[arg(long, default_value_t = 500.0)]
    rate: f64,
    /// How long to write, in seconds.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Distinct row keys written.
    #[arg(long, default_value_t = 200)]
    keys: u64,
    /// Replicas (each a data manager with its own sync service).
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    /// Concurrent writer connections (each owns a share of the keys).
    #[arg(long, default_value_t = 2)]
    writers: usize,
    /// Seconds to wait for the replicas to converge after the writes stop.
    #[arg(long, default_value_t = 30.0)]
    settle: f64,
    /// Seed for the writers.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print the report as one JSON object on stdout (progress still goes to stderr).
    #[arg(long)]
    json: bool,
}

/// Options of `electric cdc bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    backends: Backends,
    /// Paced phase: changes per second (single-row transactions, spread over --writers).
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Paced phase: seconds.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Paced phase: writer connections.
    #[arg(long, default_value_t = 4)]
    writers: usize,
    /// Paced phase: distinct keys (inserted first, then updated).
    #[arg(long, default_value_t = 1000)]
    keys: u64,
    /// Throughput phase: rows inserted, each a distinct key (and so a distinct document).
    #[arg(long, default_value_t = 50_000)]
    count: u64,
    /// Throughput phase: rows per transaction (one multi-row INSERT each).
    #[arg(long, default_value_t = 1000)]
    txn_rows: u64,
    /// Documents the connector applies concurrently within a batch.
    #[arg(long, default_value_t = 256)]
    in_flight: usize,
    /// Source batch size (changes per batch).
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Skip the raw-source baselines.
    #[arg(long)]
    no_baseline: bool,
    /// Print the report as one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

/// Options of `electric cdc connector`.
#[derive(Args, Debug)]
pub struct ConnectorArgs {
    #[command(flatten)]
    backends: Backends,
    /// The table (`name`, or `schema.name`; default schema `public` on PostgreSQL, the URL's
    /// database on MariaDB). It must have a primary key.
    #[arg(long)]
    table: String,
    /// Directory for the checkpoint file (created when missing).
    #[arg(long, value_name = "DIR")]
    checkpoint: PathBuf,
    /// Checkpoint name (default: the table's name).
    #[arg(long)]
    name: Option<String>,
    /// PostgreSQL replication slot (default `electric_<table>`).
    #[arg(long)]
    slot: Option<String>,
    /// PostgreSQL publication (default `electric_<table>`).
    #[arg(long)]
    publication: Option<String>,
    /// MariaDB replica server id (default: random).
    #[arg(long)]
    server_id: Option<u32>,
    /// Redis namespace.
    #[arg(long, default_value = "electric")]
    namespace: String,
    /// Section the documents go to (default: the table's name).
    #[arg(long)]
    section: Option<String>,
    /// Documents applied concurrently within a batch.
    #[arg(long, default_value_t = 64)]
    in_flight: usize,
}

pub async fn run(args: CdcArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        CdcCommand::Demo(a) => demo(a).await,
        CdcCommand::Bench(a) => bench(a).await,
        CdcCommand::Connector(a) => connector(a).await,
    }
}

// ---- backends -------------------------------------------------------------------------------

/// One write to the table.
#[derive(Clone, Debug)]
enum WriteOp {
    Insert { id: i64, val: String },
    Update { id: i64, val: String },
    Delete { id: i64 },
}

/// A row of the table, as read back.
#[derive(Clone, Debug, PartialEq)]
struct TableRow {
    counter: i64,
    val: String,
    ts_us: i64,
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// A database that holds the demo table: creates it, writes to it, captures it, reads it back.
#[async_trait]
trait CdcBackend: Send + Sync {
    /// `"postgres"`, `"mysql"`, `"memory"`.
    fn kind(&self) -> &'static str;
    /// The table, as change items name it.
    fn table(&self) -> TableName;
    /// Creates the (empty) table.
    async fn create_table(&self) -> anyhow::Result<()>;
    /// A writer on its own connection.
    async fn writer(&self) -> anyhow::Result<Box<dyn TableWriter>>;
    /// A change source for the table (batches of at most `batch`).
    fn source(&self, batch: usize) -> anyhow::Result<Box<dyn ChangeSource>>;
    /// Every row.
    async fn rows(&self) -> anyhow::Result<BTreeMap<i64, TableRow>>;
    /// Drops the table and anything the source left on the server (slot, publication).
    async fn cleanup(&self) -> anyhow::Result<()>;
}

/// Writes transactions to a backend's table.
#[async_trait]
trait TableWriter: Send {
    /// Writes `ops` in one transaction; every row written carries `ts_us`.
    async fn write(&mut self, ops: &[WriteOp], ts_us: i64) -> anyhow::Result<()>;
}

fn unique_table() -> String {
    format!(
        "electric_cdc_{:010x}",
        rand::random::<u64>() & 0xff_ffff_ffff
    )
}

/// Opens the backend the options name, on a fresh uniquely named table.
fn open_backend(b: &Backends) -> anyhow::Result<Arc<dyn CdcBackend>> {
    let name = unique_table();
    Ok(match (&b.pg, &b.mysql) {
        (Some(url), _) => Arc::new(PgBackend::new(url, &name)),
        (None, Some(url)) => Arc::new(MysqlBackend::new(url, &name)?),
        (None, None) => Arc::new(MemBackend::new(&name)?),
    })
}

// -- memory

struct MemBackend {
    db: MemoryDatabase,
    table: TableName,
}

impl MemBackend {
    fn new(name: &str) -> anyhow::Result<Self> {
        Ok(Self {
            db: MemoryDatabase::builder().max_log(1_000_000).build()?,
            table: TableName::new("memory", name),
        })
    }
}

struct MemWriter {
    db: MemoryDatabase,
    table: TableName,
    counters: HashMap<i64, i64>,
}

#[async_trait]
impl CdcBackend for MemBackend {
    fn kind(&self) -> &'static str {
        "memory"
    }
    fn table(&self) -> TableName {
        self.table.clone()
    }
    async fn create_table(&self) -> anyhow::Result<()> {
        Ok(self.db.create_table(&self.table, &["id"])?)
    }
    async fn writer(&self) -> anyhow::Result<Box<dyn TableWriter>> {
        Ok(Box::new(MemWriter {
            db: self.db.clone(),
            table: self.table.clone(),
            counters: HashMap::new(),
        }))
    }
    fn source(&self, batch: usize) -> anyhow::Result<Box<dyn ChangeSource>> {
        Ok(Box::new(
            self.db
                .source(format!("mem-{}", self.table.name))
                .tables([self.table.clone()])
                .batch_size(batch)
                .build()?,
        ))
    }
    async fn rows(&self) -> anyhow::Result<BTreeMap<i64, TableRow>> {
        self.db.rows(&self.table)?.iter().map(parse_row).collect()
    }
    async fn cleanup(&self) -> anyhow::Result<()> {
        Ok(())
    }
}

#[async_trait]
impl TableWriter for MemWriter {
    async fn write(&mut self, ops: &[WriteOp], ts: i64) -> anyhow::Result<()> {
        let mut txn = Txn::new();
        // The memory database replaces the given columns: the writer tracks the counters.
        let mut next = self.counters.clone();
        for op in ops {
            txn = match op {
                WriteOp::Insert { id, val } => {
                    next.insert(*id, 0);
                    txn.insert(&self.table, mem_cols(*id, 0, val, ts))
                }
                WriteOp::Update { id, val } => {
                    let c = next.entry(*id).or_insert(0);
                    *c += 1;
                    txn.update(&self.table, mem_cols(*id, *c, val, ts))
                }
                WriteOp::Delete { id } => {
                    next.remove(id);
                    txn.delete(&self.table, mem_row([("id", Value::Int(*id))]))
                }
            };
        }
        self.db.commit(txn)?;
        self.counters = next;
        Ok(())
    }
}

fn mem_cols(id: i64, counter: i64, val: &str, ts: i64) -> Row {
    mem_row([
        ("id", Value::Int(id)),
        ("counter", Value::Int(counter)),
        ("val", Value::Text(val.to_string())),
        ("ts_us", Value::Int(ts)),
    ])
}

/// A captured or stored row's columns.
fn parse_row(r: &Row) -> anyhow::Result<(i64, TableRow)> {
    let int = |c: &str| match r.get(c) {
        Some(Value::Int(i)) => Ok(*i),
        other => Err(anyhow!("column {c} is {other:?}, not an integer")),
    };
    let val = match r.get("val") {
        Some(Value::Text(s)) => s.clone(),
        other => bail!("column val is {other:?}, not text"),
    };
    Ok((
        int("id")?,
        TableRow {
            counter: int("counter")?,
            val,
            ts_us: int("ts_us")?,
        },
    ))
}

// -- PostgreSQL

struct PgBackend {
    url: String,
    name: String,
}

impl PgBackend {
    fn new(url: &str, name: &str) -> Self {
        Self {
            url: url.to_string(),
            name: name.to_string(),
        }
    }

    fn config(&self, batch: usize) -> PgSourceConfig {
        PgSourceConfig::new(
            &self.url,
            format!("s_{}", self.name),
            format!("p_{}", self.name),
            vec![TableConfig::new("public", &self.name)],
        )
        .with_max_batch(batch)
    }
}

async fn pg_connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("connecting to PostgreSQL at {url}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

struct PgWriter {
    client: tokio_postgres::Client,
    table: String,
}

#[async_trait]
impl CdcBackend for PgBackend {
    fn kind(&self) -> &'static str {
        "postgres"
    }
    fn table(&self) -> TableName {
        TableName::new("public", self.name.as_str())
    }
    async fn create_table(&self) -> anyhow::Result<()> {
        let c = pg_connect(&self.url).await?;
        c.batch_execute(&format!(
            "CREATE TABLE \"{}\" (id int8 PRIMARY KEY, counter int8 NOT NULL, val text NOT NULL, \
             ts_us int8 NOT NULL)",
            self.name
        ))
        .await
        .context("creating the table")?;
        Ok(())
    }
    async fn writer(&self) -> anyhow::Result<Box<dyn TableWriter>> {
        Ok(Box::new(PgWriter {
            client: pg_connect(&self.url).await?,
            table: format!("\"{}\"", self.name),
        }))
    }
    fn source(&self, batch: usize) -> anyhow::Result<Box<dyn ChangeSource>> {
        Ok(Box::new(PgChangeSource::new(self.config(batch))?))
    }
    async fn rows(&self) -> anyhow::Result<BTreeMap<i64, TableRow>> {
        let c = pg_connect(&self.url).await?;
        let rows = c
            .query(
                &format!("SELECT id, counter, val, ts_us FROM \"{}\"", self.name),
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    r.get::<_, i64>(0),
                    TableRow {
                        counter: r.get(1),
                        val: r.get(2),
                        ts_us: r.get(3),
                    },
                )
            })
            .collect())
    }
    async fn cleanup(&self) -> anyhow::Result<()> {
        let mut src = PgChangeSource::new(self.config(1000))?;
        let dropped = src.drop_slot_and_publication().await;
        let c = pg_connect(&self.url).await?;
        c.batch_execute(&format!("DROP TABLE IF EXISTS \"{}\"", self.name))
            .await?;
        dropped.context("dropping the slot and publication")?;
        Ok(())
    }
}

/// Values in generated SQL are integers and `[a-z0-9]` text only (checked).
fn sql_text(s: &str) -> anyhow::Result<String> {
    ensure!(
        s.bytes().all(|b| b.is_ascii_alphanumeric()),
        "generated value {s:?} is not alphanumeric"
    );
    Ok(format!("'{s}'"))
}

/// One transaction's SQL (PostgreSQL and MariaDB understand the same statements here);
/// consecutive inserts become one multi-row INSERT.
fn txn_sql(table: &str, ops: &[WriteOp], ts: i64) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut values: Vec<String> = Vec::new();
    let flush = |values: &mut Vec<String>, out: &mut Vec<String>| {
        if !values.is_empty() {
            out.push(format!(
                "INSERT INTO {table} (id, counter, val, ts_us) VALUES {}",
                values.join(",")
            ));
            values.clear();
        }
    };
    for op in ops {
        match op {
            WriteOp::Insert { id, val } => values.push(format!("({id},0,{},{ts})", sql_text(val)?)),
            WriteOp::Update { id, val } => {
                flush(&mut values, &mut out);
                out.push(format!(
                    "UPDATE {table} SET counter = counter + 1, val = {}, ts_us = {ts} WHERE id = {id}",
                    sql_text(val)?
                ));
            }
            WriteOp::Delete { id } => {
                flush(&mut values, &mut out);
                out.push(format!("DELETE FROM {table} WHERE id = {id}"));
            }
        }
    }
    flush(&mut values, &mut out);
    Ok(out)
}

#[async_trait]
impl TableWriter for PgWriter {
    async fn write(&mut self, ops: &[WriteOp], ts: i64) -> anyhow::Result<()> {
        let stmts = txn_sql(&self.table, ops, ts)?;
        // One simple-query string is one implicit transaction.
        let sql = if stmts.len() == 1 {
            stmts.concat()
        } else {
            format!("BEGIN; {}; COMMIT", stmts.join("; "))
        };
        self.client.batch_execute(&sql).await?;
        Ok(())
    }
}

// -- MariaDB / MySQL

struct MysqlBackend {
    url: String,
    database: String,
    name: String,
    pool: mysql_async::Pool,
}

impl MysqlBackend {
    fn new(url: &str, name: &str) -> anyhow::Result<Self> {
        let opts = mysql_async::Opts::from_url(url).context("bad MariaDB URL")?;
        let database = opts
            .db_name()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("the MariaDB URL must name a database"))?;
        Ok(Self {
            url: url.to_string(),
            database,
            name: name.to_string(),
            pool: mysql_async::Pool::new(opts),
        })
    }
}

struct MysqlWriter {
    conn: mysql_async::Conn,
    table: String,
}

#[async_trait]
impl CdcBackend for MysqlBackend {
    fn kind(&self) -> &'static str {
        "mysql"
    }
    fn table(&self) -> TableName {
        TableName::new(self.database.as_str(), self.name.as_str())
    }
    async fn create_table(&self) -> anyhow::Result<()> {
        let mut c = self
            .pool
            .get_conn()
            .await
            .context("connecting to MariaDB")?;
        c.query_drop(format!(
            "CREATE TABLE `{}` (id BIGINT PRIMARY KEY, counter BIGINT NOT NULL, \
             val VARCHAR(64) NOT NULL, ts_us BIGINT NOT NULL)",
            self.name
        ))
        .await
        .context("creating the table")?;
        Ok(())
    }
    async fn writer(&self) -> anyhow::Result<Box<dyn TableWriter>> {
        Ok(Box::new(MysqlWriter {
            conn: self
                .pool
                .get_conn()
                .await
                .context("connecting to MariaDB")?,
            table: format!("`{}`", self.name),
        }))
    }
    fn source(&self, batch: usize) -> anyhow::Result<Box<dyn ChangeSource>> {
        Ok(Box::new(
            electric_mysql::MysqlChangeSource::builder(&self.url)
                .table(format!("{}.{}", self.database, self.name))
                .max_batch(batch)
                .build()?,
        ))
    }
    async fn rows(&self) -> anyhow::Result<BTreeMap<i64, TableRow>> {
        let mut c = self.pool.get_conn().await?;
        let rows: Vec<(i64, i64, String, i64)> = c
            .query(format!(
                "SELECT id, counter, val, ts_us FROM `{}`",
                self.name
            ))
            .await?;
        Ok(rows
            .into_iter()
            .map(|(id, counter, val, ts_us)| {
                (
                    id,
                    TableRow {
                        counter,
                        val,
                        ts_us,
                    },
                )
            })
            .collect())
    }
    async fn cleanup(&self) -> anyhow::Result<()> {
        let mut c = self.pool.get_conn().await?;
        c.query_drop(format!("DROP TABLE IF EXISTS `{}`", self.name))
            .await?;
        Ok(())
    }
}

#[async_trait]
impl TableWriter for MysqlWriter {
    async fn write(&mut self, ops: &[WriteOp], ts: i64) -> anyhow::Result<()> {
        let stmts = txn_sql(&self.table, ops, ts)?;
        if stmts.len() == 1 {
            self.conn.query_drop(&stmts[0]).await?;
        } else {
            let mut tx = self
                .conn
                .start_transaction(mysql_async::TxOpts::default())
                .await?;
            for s in &stmts {
                tx.query_drop(s).await?;
            }
            tx.commit().await?;
        }
        Ok(())
    }
}

// ---- documents ------------------------------------------------------------------------------

fn to_json(v: &Value) -> Json {
    match v {
        Value::Null | Value::Unchanged => Json::Null,
        Value::Bool(b) => json!(b),
        Value::Int(i) => json!(i),
        Value::Float(f) => json!(f),
        Value::Text(s) => json!(s),
        Value::Bytes(b) => json!(b.iter().map(|x| format!("{x:02x}")).collect::<String>()),
        Value::Json(j) => j.clone(),
    }
}

/// The mapping every command uses: one document per row, every column a member, plus
/// `applied` bumped on each application (so a change applied twice shows).
fn mapping(table: TableName, manager: DataManager<JsonDoc>) -> TableMapping {
    TableMapping::build(table, manager, |doc: &mut JsonDoc, row: &Row| {
        for (c, v) in &row.columns {
            if *v != Value::Unchanged {
                doc.insert(c.to_string(), to_json(v));
            }
        }
        let n = doc.get("applied").and_then(Json::as_i64).unwrap_or(0);
        if n == i64::MAX {
            return Err(MapError::new("applied counter overflow"));
        }
        doc.insert("applied".into(), json!(n + 1));
        Ok(())
    })
}

/// Whether a document equals its row; `Err(reason)` names the first difference.
fn doc_matches(id: i64, doc: Option<&JsonDoc>, row: Option<&TableRow>) -> Result<(), String> {
    match (doc, row) {
        (None, None) => Ok(()),
        (Some(_), None) => Err(format!("document {id} exists, its row does not")),
        (None, Some(_)) => Err(format!("row {id} has no document")),
        (Some(d), Some(r)) => {
            let got = (
                d.get("id").and_then(Json::as_i64),
                d.get("counter").and_then(Json::as_i64),
                d.get("val").and_then(Json::as_str),
                d.get("ts_us").and_then(Json::as_i64),
            );
            if got
                != (
                    Some(id),
                    Some(r.counter),
                    Some(r.val.as_str()),
                    Some(r.ts_us),
                )
            {
                return Err(format!("document {id} is {got:?}, its row {r:?}"));
            }
            Ok(())
        }
    }
}

/// `applied − (counter + 1)` of a document: > 0 means changes applied twice.
fn extra_applications(d: &JsonDoc) -> i64 {
    let applied = d.get("applied").and_then(Json::as_i64).unwrap_or(0);
    let counter = d.get("counter").and_then(Json::as_i64).unwrap_or(0);
    applied - (counter + 1)
}

/// The store the options name (a fresh namespace for Redis).
async fn open_store(
    redis: Option<&str>,
    namespace: &str,
) -> anyhow::Result<(Arc<dyn Store>, Option<RedisStore>)> {
    Ok(match redis {
        Some(url) => {
            let r = RedisStore::builder(url)
                .namespace(namespace)
                .connect()
                .await
                .with_context(|| format!("connecting to redis at {url}"))?;
            (Arc::new(r.clone()), Some(r))
        }
        None => (Arc::new(MemoryStore::new()), None),
    })
}

/// The `ts_us` a delta carries (in its patch ops or its snapshot value).
fn delta_ts(ops: &Json) -> Option<i64> {
    fn find(v: &Json) -> Option<i64> {
        match v {
            Json::Array(a) => a.iter().find_map(find),
            Json::Object(o) => {
                if o.get("path").and_then(Json::as_str) == Some("/ts_us") {
                    return o.get("value").and_then(Json::as_i64);
                }
                if let Some(t) = o.get("ts_us").and_then(Json::as_i64) {
                    return Some(t);
                }
                o.get("value").and_then(find)
            }
            _ => None,
        }
    }
    find(ops)
}

// ---- latency samples ------------------------------------------------------------------------

#[derive(Default)]
struct Samples {
    us: Vec<u64>,
    /// Samples beyond [`MAX_SAMPLES`], counted only.
    dropped: u64,
}

impl Samples {
    fn push(&mut self, v: u64) {
        if self.us.len() < MAX_SAMPLES {
            self.us.push(v);
        } else {
            self.dropped += 1;
        }
    }
    fn push_since(&mut self, ts_us: i64) {
        self.push(u64::try_from(now_us().saturating_sub(ts_us)).unwrap_or(0));
    }
    fn count(&self) -> u64 {
        self.us.len() as u64 + self.dropped
    }
    fn report(&mut self) -> Lag {
        self.us.sort_unstable();
        let q = |p: f64| -> u64 {
            if self.us.is_empty() {
                return 0;
            }
            let i = ((self.us.len() as f64 - 1.0) * p).round() as usize;
            self.us[i.min(self.us.len() - 1)]
        };
        Lag {
            samples: self.count(),
            p50_us: q(0.50),
            p90_us: q(0.90),
            p99_us: q(0.99),
            max_us: self.us.last().copied().unwrap_or(0),
        }
    }
}

#[derive(Serialize, Clone, Copy, Debug, Default)]
struct Lag {
    samples: u64,
    p50_us: u64,
    p90_us: u64,
    p99_us: u64,
    max_us: u64,
}

type SharedSamples = Arc<Mutex<Samples>>;

fn lock(s: &SharedSamples) -> std::sync::MutexGuard<'_, Samples> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

// ---- paced writers --------------------------------------------------------------------------

#[derive(Default)]
struct WriteCounts {
    changes: AtomicU64,
    txns: AtomicU64,
    errors: AtomicU64,
}

/// Runs `writers` paced writers for `seconds` at `rate` changes/s total; writer `w` owns keys
/// `k ≡ w (mod writers)` below `keys`. `mix`: inserts, updates and deletes (a missing key is
/// inserted; a present one is updated, or with probability `delete_p` deleted).
#[allow(clippy::too_many_arguments)]
async fn paced_writes(
    backend: &Arc<dyn CdcBackend>,
    writers: usize,
    rate: f64,
    seconds: f64,
    keys: u64,
    delete_p: f64,
    seed: u64,
    counts: Arc<WriteCounts>,
) -> anyhow::Result<()> {
    let mut tasks = Vec::new();
    for w in 0..writers {
        let mut writer = backend.writer().await?;
        let counts = counts.clone();
        let per = rate / writers as f64;
        tasks.push(tokio::spawn(async move {
            let mut rng = SmallRng::seed_from_u64(seed ^ (w as u64).wrapping_mul(0x9e37_79b9));
            let mine: Vec<i64> = (0..keys)
                .filter(|k| k % writers as u64 == w as u64)
                .map(|k| k as i64)
                .collect();
            if mine.is_empty() {
                return Ok::<(), anyhow::Error>(());
            }
            let mut live = vec![false; mine.len()];
            let start = Instant::now();
            let end = start + Duration::from_secs_f64(seconds);
            let mut done = 0u64;
            while Instant::now() < end {
                // Pace: change `done` is due at start + done/per.
                let due = start + Duration::from_secs_f64(done as f64 / per);
                if due > Instant::now() {
                    tokio::time::sleep_until(due.into()).await;
                }
                let i = rng.gen_range(0..mine.len());
                let id = mine[i];
                let val = format!("v{}", rng.gen_range(0..1_000_000u32));
                let op = if !live[i] {
                    WriteOp::Insert { id, val }
                } else if rng.gen_bool(delete_p) {
                    WriteOp::Delete { id }
                } else {
                    WriteOp::Update { id, val }
                };
                match writer.write(std::slice::from_ref(&op), now_us()).await {
                    Ok(()) => {
                        live[i] = !matches!(op, WriteOp::Delete { .. });
                        counts.changes.fetch_add(1, Ordering::Relaxed);
                        counts.txns.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        if counts.errors.fetch_add(1, Ordering::Relaxed) < 3 {
                            eprintln!("warning: write failed: {e:#}");
                        }
                    }
                }
                done += 1;
            }
            Ok(())
        }));
    }
    for t in tasks {
        t.await.context("writer task")??;
    }
    Ok(())
}

/// Prints progress lines to stderr every second until `stop`.
fn progress(
    label: &'static str,
    counts: Arc<WriteCounts>,
    applied: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let start = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if stop.load(Ordering::Relaxed) {
                break;
            }
            eprintln!(
                "{label} {:>5.1}s  written {:>8}  applied {:>8}  write errors {}",
                start.elapsed().as_secs_f64(),
                counts.changes.load(Ordering::Relaxed),
                applied.load(Ordering::Relaxed),
                counts.errors.load(Ordering::Relaxed),
            );
        }
    })
}

// ---- the pipeline ---------------------------------------------------------------------------

/// A connector into a section plus replicas following it, all on one store.
struct Pipeline {
    token: CancellationToken,
    connector: electric::cdc::ConnectorHandle,
    replicas: Vec<DataManager<JsonDoc>>,
    syncs: Vec<electric::sync::SyncHandle>,
    followers: Vec<tokio::task::JoinHandle<()>>,
    /// Commit → applied by the connector (document committed in the store).
    applied_lag: SharedSamples,
    /// Commit → delta seen by replica 0's subscription.
    delta_lag: SharedSamples,
    applied: Arc<AtomicU64>,
    deltas_seen: Arc<AtomicU64>,
}

async fn start_pipeline(
    backend: &Arc<dyn CdcBackend>,
    store: Arc<dyn Store>,
    replicas: usize,
    batch: usize,
    in_flight: usize,
) -> anyhow::Result<Pipeline> {
    let table = backend.table();
    let section = table.name.to_string();
    let writer = DataManager::<JsonDoc>::builder(store.clone(), PARTITION, section.as_str())
        .origin("cdc-connector")
        .build()?;
    let token = CancellationToken::new();
    let applied_lag: SharedSamples = Arc::default();
    let delta_lag: SharedSamples = Arc::default();
    let applied = Arc::new(AtomicU64::new(0));
    let deltas_seen = Arc::new(AtomicU64::new(0));
    // Replicas first, so they see every delta from the start.
    let mut managers = Vec::new();
    let mut syncs = Vec::new();
    let mut followers = Vec::new();
    for r in 0..replicas {
        let m = DataManager::<JsonDoc>::builder(store.clone(), PARTITION, section.as_str())
            .origin(format!("replica-{r}"))
            .build()?;
        syncs.push(
            SyncService::builder()
                .manager(&m)
                .build()?
                .spawn(token.clone()),
        );
        // A follower loads every document the section announces, so the replica holds the
        // whole section (a replica otherwise keeps only what it has read).
        let mut sub = store.subscribe(writer.section()).await?;
        let (m2, tok, lag, seen) = (
            m.clone(),
            token.clone(),
            delta_lag.clone(),
            deltas_seen.clone(),
        );
        followers.push(tokio::spawn(async move {
            loop {
                let ev = tokio::select! {
                    _ = tok.cancelled() => return,
                    ev = sub.next() => ev,
                };
                let Some(ev) = ev else { return };
                let Ok(SubscriptionEvent::Delta(d)) = ev else {
                    continue;
                };
                if r == 0 {
                    seen.fetch_add(1, Ordering::Relaxed);
                    if let Some(ts) = serde_json::to_value(&d.ops)
                        .ok()
                        .as_ref()
                        .and_then(delta_ts)
                    {
                        lock(&lag).push_since(ts);
                    }
                }
                if d.kind != electric::delta::DeltaKind::Delete {
                    // Load a document this replica does not hold, or holds from an earlier
                    // life of the key (deleted and created again): the sync service only keeps
                    // cached documents up to date.
                    let id = d.key.id().to_string();
                    let current = m2.cached(&id).and_then(|c| c.stamp());
                    if current.is_none_or(|st| st.epoch != d.epoch) {
                        m2.remove_from_cache(&id);
                        let _ = m2.get(&id).await;
                    }
                }
            }
        }));
        managers.push(m);
    }
    let (lag2, applied2) = (applied_lag.clone(), applied.clone());
    let connector = Connector::builder_boxed(
        backend.source(batch)?,
        Arc::new(MemoryCheckpoints::new()),
        section.as_str(),
    )
    .table(mapping(table, writer))
    .max_in_flight(in_flight)
    .on_applied(move |item, what| {
        if what == Applied::Applied {
            applied2.fetch_add(1, Ordering::Relaxed);
            if let Some(Value::Int(ts)) = item.new.as_ref().and_then(|r| r.get("ts_us")) {
                lock(&lag2).push_since(*ts);
            }
        }
    })
    .build()?
    .spawn(token.clone());
    Ok(Pipeline {
        token,
        connector,
        replicas: managers,
        syncs,
        followers,
        applied_lag,
        delta_lag,
        applied,
        deltas_seen,
    })
}

impl Pipeline {
    /// Waits until the connector has taken its first checkpoint (the initial snapshot is
    /// through and streaming has started).
    async fn wait_started(&self, within: Duration) -> anyhow::Result<()> {
        let mut rx = self.connector.checkpoints();
        let deadline = tokio::time::sleep(within);
        tokio::pin!(deadline);
        loop {
            if rx.borrow_and_update().is_some() {
                return Ok(());
            }
            if self.connector.is_finished() {
                bail!("the connector stopped before it started streaming");
            }
            tokio::select! {
                _ = &mut deadline => bail!("the connector did not start within {within:?}"),
                _ = rx.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    }

    async fn stop(self) -> anyhow::Result<electric::cdc::ConnectorStats> {
        let stats = self.connector.stats();
        self.token.cancel();
        let ended = self.connector.join().await;
        for s in &self.syncs {
            s.join().await;
        }
        for f in self.followers {
            let _ = f.await;
        }
        ended.context("the connector failed")?;
        Ok(stats)
    }
}

/// Compares every replica with the table over keys `0..keys`: `(equal replicas, first
/// difference, extra applications seen)`.
fn compare(
    replicas: &[DataManager<JsonDoc>],
    rows: &BTreeMap<i64, TableRow>,
    keys: u64,
) -> (usize, Option<String>, i64) {
    let mut equal = 0;
    let mut first = None;
    let mut extra = 0;
    for (r, m) in replicas.iter().enumerate() {
        let mut ok = true;
        for id in 0..keys as i64 {
            let doc = m.cached(&id.to_string());
            let d = doc.as_ref().map(|d| d.value());
            if let Some(d) = d {
                extra = extra.max(extra_applications(d));
            }
            if let Err(e) = doc_matches(id, d, rows.get(&id)) {
                ok = false;
                first.get_or_insert_with(|| format!("replica {r}: {e}"));
                break;
            }
        }
        equal += usize::from(ok);
    }
    (equal, first, extra)
}

// ---- demo -----------------------------------------------------------------------------------

#[derive(Serialize)]
struct DemoReport {
    source: &'static str,
    store: &'static str,
    table: String,
    replicas: usize,
    /// Changes written to the table (each insert, update or delete one).
    changes: u64,
    transactions: u64,
    write_errors: u64,
    /// Changes the connector applied to documents.
    applied: u64,
    duplicates_skipped: u64,
    /// Documents with more applications than their row has changes (must be 0).
    applied_twice: i64,
    rows_at_end: usize,
    replicas_equal: usize,
    converged: bool,
    first_difference: Option<String>,
    /// Source commit → delta seen by a replica's subscription.
    lag: Lag,
    /// Source commit → document committed in the store (the connector's view).
    apply_lag: Lag,
    /// Changes applied per second over the write phase.
    throughput: f64,
    seconds: f64,
    converge_ms: u64,
    connector_errors: BTreeMap<String, u64>,
}

async fn demo(args: DemoArgs) -> anyhow::Result<ExitCode> {
    ensure!(args.replicas >= 1, "--replicas must be at least 1");
    ensure!(args.keys >= 1, "--keys must be at least 1");
    ensure!(args.writers >= 1, "--writers must be at least 1");
    ensure!(
        args.rate.is_finite() && args.rate > 0.0,
        "--rate must be positive"
    );
    ensure!(
        args.seconds.is_finite() && args.seconds > 0.0,
        "--seconds must be positive"
    );
    ensure!(
        args.settle.is_finite() && args.settle >= 0.0,
        "--settle must not be negative"
    );
    let backend = open_backend(&args.backends)?;
    let namespace = electric_testkit::unique("electric-cdc-demo");
    let (store, redis) = open_store(args.backends.redis.as_deref(), &namespace).await?;
    backend.create_table().await?;
    eprintln!(
        "table {} on {}, documents in {} (section {PARTITION}/{})",
        backend.table(),
        backend.kind(),
        if redis.is_some() {
            format!("redis namespace {namespace}")
        } else {
            "the embedded store".into()
        },
        backend.table().name
    );
    let outcome = demo_on(&args, &backend, store, redis.is_some()).await;
    if let Err(e) = backend.cleanup().await {
        eprintln!("warning: cleanup of {} failed: {e:#}", backend.table());
    }
    if let Some(r) = &redis {
        if let Err(e) = r.purge_namespace().await {
            eprintln!("warning: could not delete the namespace {namespace}: {e}");
        }
    }
    outcome
}

async fn demo_on(
    args: &DemoArgs,
    backend: &Arc<dyn CdcBackend>,
    store: Arc<dyn Store>,
    redis: bool,
) -> anyhow::Result<ExitCode> {
    let p = start_pipeline(backend, store, args.replicas, 1000, 64).await?;
    p.wait_started(Duration::from_secs(30)).await?;
    let counts = Arc::new(WriteCounts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let prog = progress("demo", counts.clone(), p.applied.clone(), stop.clone());
    let started = Instant::now();
    let written = paced_writes(
        backend,
        args.writers,
        args.rate,
        args.seconds,
        args.keys,
        0.15,
        args.seed,
        counts.clone(),
    )
    .await;
    let seconds = started.elapsed().as_secs_f64();
    let applied_by_end = p.applied.load(Ordering::Relaxed);
    let settle_start = Instant::now();
    let result = async {
        written?;
        let rows = backend.rows().await?;
        let deadline = settle_start + Duration::from_secs_f64(args.settle);
        loop {
            let (equal, first, extra) = compare(&p.replicas, &rows, args.keys);
            if equal == p.replicas.len() || Instant::now() >= deadline {
                return anyhow::Ok((rows, equal, first, extra));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    .await;
    stop.store(true, Ordering::Relaxed);
    let _ = prog.await;
    let converge_ms = settle_start.elapsed().as_millis() as u64;
    let (applied_lag, delta_lag) = (p.applied_lag.clone(), p.delta_lag.clone());
    let stats = p.stop().await?;
    let (rows, equal, first, extra) = result?;
    let converged = equal == args.replicas && extra == 0;
    let report = DemoReport {
        source: backend.kind(),
        store: if redis { "redis" } else { "memory" },
        table: backend.table().to_string(),
        replicas: args.replicas,
        changes: counts.changes.load(Ordering::Relaxed),
        transactions: counts.txns.load(Ordering::Relaxed),
        write_errors: counts.errors.load(Ordering::Relaxed),
        applied: stats.applied,
        duplicates_skipped: stats.duplicates,
        applied_twice: extra,
        rows_at_end: rows.len(),
        replicas_equal: equal,
        converged,
        first_difference: first,
        lag: lock(&delta_lag).report(),
        apply_lag: lock(&applied_lag).report(),
        throughput: applied_by_end as f64 / seconds,
        seconds,
        converge_ms,
        connector_errors: stats
            .errors
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), *v))
            .collect(),
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        let r = &report;
        println!(
            "cdc demo: {} → {} ({} replicas)",
            r.source, r.store, r.replicas
        );
        println!("  table               {}", r.table);
        println!(
            "  changes written     {:>10}  ({} transactions, {} write errors)",
            r.changes, r.transactions, r.write_errors
        );
        println!(
            "  changes applied     {:>10}  ({} duplicates skipped)",
            r.applied, r.duplicates_skipped
        );
        println!("  throughput          {:>10.0} changes/s", r.throughput);
        println!(
            "  lag commit→replica  p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
            r.lag.p50_us as f64 / 1e3,
            r.lag.p99_us as f64 / 1e3,
            r.lag.max_us as f64 / 1e3
        );
        println!(
            "  lag commit→store    p50 {:.2} ms  p99 {:.2} ms",
            r.apply_lag.p50_us as f64 / 1e3,
            r.apply_lag.p99_us as f64 / 1e3
        );
        println!("  rows at the end     {:>10}", r.rows_at_end);
        println!(
            "  replicas equal      {:>10} of {}",
            r.replicas_equal, r.replicas
        );
        println!("  applied twice       {:>10}", r.applied_twice);
        if let Some(d) = &r.first_difference {
            println!("  first difference    {d}");
        }
        println!(
            "  converged           {:>10}  (after {} ms)",
            r.converged, r.converge_ms
        );
    }
    Ok(if converged {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

// ---- bench ----------------------------------------------------------------------------------

#[derive(Serialize, Default)]
struct PacedReport {
    target_rate: f64,
    achieved_rate: f64,
    changes: u64,
    /// Commit → the raw source hands the change out (no store).
    source_only: Option<Lag>,
    /// Commit → document committed in the store (connector's on-applied).
    store_committed: Lag,
    /// Commit → delta seen by a subscriber of the section.
    delta_seen: Lag,
}

#[derive(Serialize, Default)]
struct ThroughputReport {
    rows: u64,
    rows_per_txn: u64,
    /// Rows written per second (writer alone, one connection).
    write_rate: f64,
    /// The raw source alone: rows received per second, first write to last row received.
    source_only: Option<f64>,
    /// Rows applied to documents and their deltas seen, per second, first write to last delta.
    end_to_end: f64,
    /// Rows the connector applied per second (first write to last applied).
    applied_rate: f64,
}

#[derive(Serialize)]
struct BenchReport {
    source: &'static str,
    store: &'static str,
    host_cpus: usize,
    load_average: Option<String>,
    paced: PacedReport,
    throughput_phase: ThroughputReport,
    /// The headline figures (what the demo's report names them).
    changes: u64,
    applied: u64,
    converged: bool,
    lag: Lag,
    throughput: f64,
}

/// The raw source alone: reads the table's changes with no store, measuring `ts_us` lag and
/// counting rows until `expect` arrive (or `stop`).
async fn source_only_reader(
    mut src: Box<dyn ChangeSource>,
    samples: SharedSamples,
    count: Arc<AtomicU64>,
    started: tokio::sync::oneshot::Sender<()>,
    token: CancellationToken,
) -> anyhow::Result<()> {
    src.start(None).await?;
    let mut started = Some(started);
    loop {
        let ev = tokio::select! {
            _ = token.cancelled() => return Ok(()),
            ev = src.next() => ev?,
        };
        let Some(ev) = ev else { return Ok(()) };
        if let SourceEvent::Changes(b) = ev {
            for it in &b.items {
                if let Some(Value::Int(ts)) = it.new.as_ref().and_then(|r| r.get("ts_us")) {
                    lock(&samples).push_since(*ts);
                }
                count.fetch_add(1, Ordering::Relaxed);
            }
            if let Some(cp) = &b.checkpoint {
                src.ack(cp).await?;
                if let Some(s) = started.take() {
                    let _ = s.send(());
                }
            }
        }
    }
}

/// Waits until `counter` reaches `n` or `within` passes; the instant it got there.
async fn wait_count(counter: &AtomicU64, n: u64, within: Duration) -> Option<Instant> {
    let deadline = Instant::now() + within;
    loop {
        if counter.load(Ordering::Relaxed) >= n {
            return Some(Instant::now());
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
}

async fn bench(args: BenchArgs) -> anyhow::Result<ExitCode> {
    ensure!(
        args.rate.is_finite() && args.rate > 0.0,
        "--rate must be positive"
    );
    ensure!(
        args.writers >= 1 && args.keys >= 1,
        "--writers and --keys must be at least 1"
    );
    ensure!(
        args.count >= 1 && args.txn_rows >= 1,
        "--count and --txn-rows must be at least 1"
    );
    ensure!(
        args.in_flight >= 1 && args.batch >= 1,
        "--in-flight and --batch must be at least 1"
    );
    let redis_url = args.backends.redis.as_deref();
    let mut paced = PacedReport {
        target_rate: args.rate,
        ..PacedReport::default()
    };
    let mut tp = ThroughputReport {
        rows: args.count,
        rows_per_txn: args.txn_rows,
        ..ThroughputReport::default()
    };
    let kind = match (&args.backends.pg, &args.backends.mysql) {
        (Some(_), _) => "postgres",
        (None, Some(_)) => "mysql",
        (None, None) => "memory",
    };

    // Phase 1: paced, raw source alone.
    if !args.no_baseline {
        let b = open_backend(&args.backends)?;
        b.create_table().await?;
        let r = async {
            let samples: SharedSamples = Arc::default();
            let count = Arc::new(AtomicU64::new(0));
            let token = CancellationToken::new();
            let (tx, rx) = tokio::sync::oneshot::channel();
            let reader = tokio::spawn(source_only_reader(
                b.source(args.batch)?,
                samples.clone(),
                count.clone(),
                tx,
                token.clone(),
            ));
            let _ = tokio::time::timeout(Duration::from_secs(30), rx).await;
            eprintln!(
                "bench: paced {} changes/s for {} s, raw source only",
                args.rate, args.seconds
            );
            let counts = Arc::new(WriteCounts::default());
            paced_writes(
                &b,
                args.writers,
                args.rate,
                args.seconds,
                args.keys,
                0.0,
                7,
                counts.clone(),
            )
            .await?;
            let n = counts.changes.load(Ordering::Relaxed);
            wait_count(&count, n, Duration::from_secs(30)).await;
            token.cancel();
            reader.await??;
            let lag = lock(&samples).report();
            anyhow::Ok(lag)
        }
        .await;
        let _ = b.cleanup().await;
        paced.source_only = Some(r?);
    }

    // Phase 2: paced, the whole pipeline.
    {
        let b = open_backend(&args.backends)?;
        let ns = electric_testkit::unique("electric-cdc-bench");
        let (store, redis) = open_store(redis_url, &ns).await?;
        b.create_table().await?;
        let r = async {
            let p = start_pipeline(&b, store, 1, args.batch, args.in_flight).await?;
            p.wait_started(Duration::from_secs(30)).await?;
            eprintln!(
                "bench: paced {} changes/s for {} s, source → connector → store → subscriber",
                args.rate, args.seconds
            );
            let counts = Arc::new(WriteCounts::default());
            let stop = Arc::new(AtomicBool::new(false));
            let prog = progress(
                "bench paced",
                counts.clone(),
                p.applied.clone(),
                stop.clone(),
            );
            let t0 = Instant::now();
            paced_writes(
                &b,
                args.writers,
                args.rate,
                args.seconds,
                args.keys,
                0.0,
                11,
                counts.clone(),
            )
            .await?;
            let secs = t0.elapsed().as_secs_f64();
            let n = counts.changes.load(Ordering::Relaxed);
            wait_count(&p.deltas_seen, n, Duration::from_secs(30)).await;
            stop.store(true, Ordering::Relaxed);
            let _ = prog.await;
            paced.changes = n;
            paced.achieved_rate = n as f64 / secs;
            paced.store_committed = lock(&p.applied_lag).report();
            paced.delta_seen = lock(&p.delta_lag).report();
            p.stop().await?;
            anyhow::Ok(())
        }
        .await;
        let _ = b.cleanup().await;
        if let Some(r) = &redis {
            let _ = r.purge_namespace().await;
        }
        r?;
    }

    // Phase 3: throughput, raw source alone then the whole pipeline; distinct keys, multi-row
    // transactions.
    let rows: Vec<Vec<WriteOp>> = (0..args.count as i64)
        .collect::<Vec<_>>()
        .chunks(args.txn_rows as usize)
        .map(|c| {
            c.iter()
                .map(|&id| WriteOp::Insert {
                    id,
                    val: format!("v{id}"),
                })
                .collect()
        })
        .collect();
    if !args.no_baseline {
        let b = open_backend(&args.backends)?;
        b.create_table().await?;
        let r = async {
            let samples: SharedSamples = Arc::default();
            let count = Arc::new(AtomicU64::new(0));
            let token = CancellationToken::new();
            let (tx, rx) = tokio::sync::oneshot::channel();
            let reader = tokio::spawn(source_only_reader(
                b.source(args.batch)?,
                samples,
                count.clone(),
                tx,
                token.clone(),
            ));
            let _ = tokio::time::timeout(Duration::from_secs(30), rx).await;
            eprintln!(
                "bench: {} rows in transactions of {}, raw source only",
                args.count, args.txn_rows
            );
            let mut w = b.writer().await?;
            let t0 = Instant::now();
            for txn in &rows {
                w.write(txn, now_us()).await?;
            }
            let done = wait_count(&count, args.count, Duration::from_secs(120)).await;
            token.cancel();
            reader.await??;
            anyhow::Ok(done.map(|t| args.count as f64 / (t - t0).as_secs_f64()))
        }
        .await;
        let _ = b.cleanup().await;
        tp.source_only = r?;
    }
    let mut converged = false;
    {
        let b = open_backend(&args.backends)?;
        let ns = electric_testkit::unique("electric-cdc-bench");
        let (store, redis) = open_store(redis_url, &ns).await?;
        b.create_table().await?;
        let r = async {
            let p = start_pipeline(&b, store, 1, args.batch, args.in_flight).await?;
            p.wait_started(Duration::from_secs(30)).await?;
            eprintln!(
                "bench: {} rows in transactions of {}, source → connector → store → subscriber",
                args.count, args.txn_rows
            );
            let counts = Arc::new(WriteCounts::default());
            let stop = Arc::new(AtomicBool::new(false));
            let prog = progress(
                "bench throughput",
                counts.clone(),
                p.applied.clone(),
                stop.clone(),
            );
            let mut w = b.writer().await?;
            let t0 = Instant::now();
            for txn in &rows {
                w.write(txn, now_us()).await?;
                counts
                    .changes
                    .fetch_add(txn.len() as u64, Ordering::Relaxed);
            }
            tp.write_rate = args.count as f64 / t0.elapsed().as_secs_f64();
            let applied_at = wait_count(&p.applied, args.count, Duration::from_secs(300)).await;
            let seen_at = wait_count(&p.deltas_seen, args.count, Duration::from_secs(60)).await;
            stop.store(true, Ordering::Relaxed);
            let _ = prog.await;
            tp.applied_rate =
                applied_at.map_or(0.0, |t| args.count as f64 / (t - t0).as_secs_f64());
            tp.end_to_end = seen_at.map_or(0.0, |t| args.count as f64 / (t - t0).as_secs_f64());
            let table_rows = b.rows().await?;
            let (equal, first, extra) = compare(&p.replicas, &table_rows, args.count);
            converged = equal == 1 && extra == 0 && seen_at.is_some();
            if let Some(f) = first {
                eprintln!("bench: replica differs: {f}");
            }
            p.stop().await?;
            anyhow::Ok(())
        }
        .await;
        let _ = b.cleanup().await;
        if let Some(r) = &redis {
            let _ = r.purge_namespace().await;
        }
        r?;
    }
    converged = converged && paced.delta_seen.samples >= paced.changes;
    let report = BenchReport {
        source: kind,
        store: if redis_url.is_some() {
            "redis"
        } else {
            "memory"
        },
        host_cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average: std::fs::read_to_string("/proc/loadavg")
            .ok()
            .map(|s| s.trim().to_string()),
        changes: paced.changes + args.count,
        applied: paced.store_committed.samples + args.count,
        converged,
        lag: paced.delta_seen,
        throughput: tp.end_to_end,
        paced,
        throughput_phase: tp,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(if report.converged {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

// ---- connector ------------------------------------------------------------------------------

async fn connector(args: ConnectorArgs) -> anyhow::Result<ExitCode> {
    let redis_url = args
        .backends
        .redis
        .as_deref()
        .ok_or_else(|| anyhow!("--redis is required"))?;
    let (schema, name) = match args.table.split_once('.') {
        Some((s, n)) => (Some(s.to_string()), n.to_string()),
        None => (None, args.table.clone()),
    };
    let (source, table): (Box<dyn ChangeSource>, TableName) =
        match (&args.backends.pg, &args.backends.mysql) {
            (Some(url), _) => {
                let schema = schema.unwrap_or_else(|| "public".into());
                let cfg = PgSourceConfig::new(
                    url,
                    args.slot
                        .clone()
                        .unwrap_or_else(|| format!("electric_{name}")),
                    args.publication
                        .clone()
                        .unwrap_or_else(|| format!("electric_{name}")),
                    vec![TableConfig::new(&schema, &name)],
                );
                (
                    Box::new(PgChangeSource::new(cfg)?),
                    TableName::new(schema, name.as_str()),
                )
            }
            (None, Some(url)) => {
                let schema = match schema {
                    Some(s) => s,
                    None => mysql_async::Opts::from_url(url)
                        .context("bad MariaDB URL")?
                        .db_name()
                        .map(str::to_string)
                        .ok_or_else(|| {
                            anyhow!("name the table schema.name or the database in the URL")
                        })?,
                };
                let mut b = electric_mysql::MysqlChangeSource::builder(url)
                    .table(format!("{schema}.{name}"));
                if let Some(id) = args.server_id {
                    b = b.server_id(id);
                }
                (Box::new(b.build()?), TableName::new(schema, name.as_str()))
            }
            (None, None) => bail!("name the source: --pg URL or --mysql URL"),
        };
    let redis = RedisStore::builder(redis_url)
        .namespace(&args.namespace)
        .connect()
        .await
        .with_context(|| format!("connecting to redis at {redis_url}"))?;
    let section = args.section.clone().unwrap_or_else(|| name.clone());
    let manager = DataManager::<JsonDoc>::builder(Arc::new(redis), PARTITION, section.as_str())
        .origin("cdc-connector")
        .build()?;
    let checkpoints: Arc<dyn Checkpoints> = Arc::new(FileCheckpoints::open(&args.checkpoint)?);
    let cp_name = args.name.clone().unwrap_or_else(|| name.clone());
    let handle = Connector::builder_boxed(source, checkpoints, cp_name.as_str())
        .table(mapping(table.clone(), manager))
        .max_in_flight(args.in_flight)
        .build()?
        .spawn(CancellationToken::new());
    eprintln!(
        "connector {cp_name}: {table} → {PARTITION}/{section} (namespace {})",
        args.namespace
    );
    // Stopping it any way (Ctrl-C, SIGTERM, SIGKILL) is as safe as a crash: the next start
    // resumes from the last persisted checkpoint and skips what was already applied.
    let result = loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if handle.is_finished() {
            break handle.join().await;
        }
        let s = handle.stats();
        eprintln!(
            "connector: seen {} applied {} duplicates {} checkpoints {} starts {} errors {:?}",
            s.changes_seen, s.applied, s.duplicates, s.checkpoints, s.starts, s.errors
        );
    };
    result.context("the connector stopped")?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transactions_become_statements_with_multi_row_inserts() {
        let ops = vec![
            WriteOp::Insert {
                id: 1,
                val: "a".into(),
            },
            WriteOp::Insert {
                id: 2,
                val: "b".into(),
            },
            WriteOp::Update {
                id: 1,
                val: "c".into(),
            },
            WriteOp::Delete { id: 2 },
        ];
        let s = txn_sql("t", &ops, 5).unwrap();
        assert_eq!(
            s,
            vec![
                "INSERT INTO t (id, counter, val, ts_us) VALUES (1,0,'a',5),(2,0,'b',5)",
                "UPDATE t SET counter = counter + 1, val = 'c', ts_us = 5 WHERE id = 1",
                "DELETE FROM t WHERE id = 2",
            ]
        );
        let bad = [WriteOp::Insert {
            id: 1,
            val: "x'; DROP".into(),
        }];
        assert!(txn_sql("t", &bad, 5).is_err());
    }

    #[test]
    fn delta_timestamps_are_found_in_patches_and_snapshots() {
        let patch = json!([{"op": "replace", "path": "/val", "value": "x"}, {"op": "replace", "path": "/ts_us", "value": 42}]);
        assert_eq!(delta_ts(&patch), Some(42));
        let snap = json!([{"op": "add", "path": "", "value": {"id": 1, "ts_us": 7}}]);
        assert_eq!(delta_ts(&snap), Some(7));
        assert_eq!(delta_ts(&json!([{"op": "remove", "path": "/val"}])), None);
    }

    #[test]
    fn the_mapping_counts_applications_and_documents_compare_with_rows() {
        let row = TableRow {
            counter: 2,
            val: "v".into(),
            ts_us: 9,
        };
        let mut d = JsonDoc::new();
        d.insert("id".into(), json!(3));
        d.insert("counter".into(), json!(2));
        d.insert("val".into(), json!("v"));
        d.insert("ts_us".into(), json!(9));
        d.insert("applied".into(), json!(3));
        assert_eq!(doc_matches(3, Some(&d), Some(&row)), Ok(()));
        assert_eq!(extra_applications(&d), 0);
        d.insert("applied".into(), json!(4));
        assert_eq!(extra_applications(&d), 1);
        assert!(doc_matches(3, None, Some(&row)).is_err());
        assert!(doc_matches(3, Some(&d), None).is_err());
        d.insert("val".into(), json!("w"));
        assert!(doc_matches(3, Some(&d), Some(&row)).is_err());
    }

    #[test]
    fn lag_percentiles_come_from_the_kept_samples() {
        let mut s = Samples::default();
        for v in 1..=100 {
            s.push(v);
        }
        let l = s.report();
        assert_eq!(
            (l.samples, l.p50_us, l.p99_us, l.max_us),
            (100, 51, 99, 100)
        );
        assert_eq!(Samples::default().report().p50_us, 0);
    }
}
