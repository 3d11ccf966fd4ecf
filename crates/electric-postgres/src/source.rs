//! [`PgChangeSource`]: logical replication (pgoutput v1) as a [`ChangeSource`].

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use electric_core::cdc::{
    CdcError, CdcResult, ChangeBatch, ChangeItem, ChangeSource, Op, Position, Row, SourceEvent,
    TableName, Value,
};
use pgwire_replication::{
    Lsn, PgWireError, ReplicationClient, ReplicationConfig, ReplicationEvent,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

use crate::config::{quote_ident, PgSourceConfig, TableConfig};
use crate::pgoutput::{self, Message, Relation, RelationCache, Tuple};

// ---------------------------------------------------------------------------------------------
// Positions
// ---------------------------------------------------------------------------------------------

/// An item's position: `[txn LSN u64 BE][ordinal u64 BE]` (16 bytes). A checkpoint:
/// `[txn LSN][u64::MAX][resume LSN]` (24 bytes), so it sorts after every item of its transaction
/// and before the next transaction (whose commit record starts at or after the resume LSN).
///
/// The "txn LSN" is the commit record's LSN (`Begin.final_lsn`) for streamed transactions, and
/// the slot's consistent point − 1 for a snapshot (every transaction streamed after it commits
/// at or after the consistent point).
fn item_position(txn_lsn: u64, ordinal: u64) -> Position {
    let mut b = Vec::with_capacity(16);
    b.extend_from_slice(&txn_lsn.to_be_bytes());
    b.extend_from_slice(&ordinal.to_be_bytes());
    Position::from_bytes(b)
}

fn checkpoint_position(txn_lsn: u64, resume_lsn: u64) -> Position {
    let mut b = Vec::with_capacity(24);
    b.extend_from_slice(&txn_lsn.to_be_bytes());
    b.extend_from_slice(&u64::MAX.to_be_bytes());
    b.extend_from_slice(&resume_lsn.to_be_bytes());
    Position::from_bytes(b)
}

/// The LSN to resume streaming at (and to confirm) for a checkpoint this source wrote.
///
/// # Errors
/// [`CdcError::BadPosition`] for anything but a 24-byte checkpoint.
pub fn checkpoint_lsn(p: &Position) -> CdcResult<u64> {
    let b = p.as_bytes();
    if b.len() != 24 || b[8..16] != [0xff; 8] {
        return Err(CdcError::BadPosition {
            reason: format!("{p} is not a PostgreSQL checkpoint (24 bytes, ordinal ffff…)"),
        });
    }
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[16..24]);
    Ok(u64::from_be_bytes(a))
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

fn sqlstate_of(msg: &str) -> Option<&str> {
    let i = msg.rfind("SQLSTATE ")?;
    msg.get(i + 9..i + 14)
}

/// Maps a server error (SQLSTATE and message) to a [`CdcError`].
fn classify(code: Option<&str>, msg: String) -> CdcError {
    let lower = msg.to_ascii_lowercase();
    if lower.contains("wal_level") {
        return CdcError::Setting {
            setting: "wal_level".into(),
            actual: "not logical".into(),
            needed: "logical".into(),
        };
    }
    if lower.contains("invalidated") || lower.contains("can no longer get changes") {
        return CdcError::HistoryLost(msg);
    }
    match code {
        Some("42501") => CdcError::Permission {
            right: if lower.contains("replication") {
                "REPLICATION".into()
            } else {
                "privilege".into()
            },
            detail: msg,
        },
        Some(c) if c.starts_with("28") => CdcError::Permission {
            right: "LOGIN".into(),
            detail: msg,
        },
        Some("42704") => CdcError::Config(format!("server object missing: {msg}")),
        _ => CdcError::Unavailable(msg),
    }
}

fn wire_err(context: &str, e: PgWireError) -> CdcError {
    match e {
        PgWireError::Server(m) => classify(sqlstate_of(&m), format!("{context}: {m}")),
        // Not transient: the refused message is never consumed, so retrying meets it again.
        PgWireError::MessageTooLarge {
            payload_bytes,
            limit_bytes,
        } => CdcError::Malformed {
            what: "replication message",
            reason: format!(
                "{context}: a message of {payload_bytes} bytes exceeds max_message_bytes \
                 ({limit_bytes}); raise it to capture this row"
            ),
        },
        PgWireError::Auth(m) => CdcError::Permission {
            right: "LOGIN".into(),
            detail: format!("{context}: {m}"),
        },
        other => CdcError::Unavailable(format!("{context}: {other}")),
    }
}

fn pg_err(context: &str, e: tokio_postgres::Error) -> CdcError {
    match e.as_db_error() {
        Some(db) => classify(
            Some(db.code().code()),
            format!(
                "{context}: {} (SQLSTATE {})",
                db.message(),
                db.code().code()
            ),
        ),
        None => CdcError::Unavailable(format!("{context}: {e}")),
    }
}

// ---------------------------------------------------------------------------------------------
// Table metadata
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct TableMeta {
    cfg: TableConfig,
    /// Key columns (primary key, or the replica identity index, or — with `REPLICA IDENTITY
    /// FULL` and no primary key — every column).
    key: Vec<Arc<str>>,
    /// Captured columns and their type OIDs, in table order.
    columns: Vec<(String, u32)>,
}

async fn load_table(client: &Client, cfg: &TableConfig) -> CdcResult<TableMeta> {
    let t = &cfg.table;
    let rows = client
        .query(
            "SELECT c.oid::int8, c.relreplident::text FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
            &[&&*t.schema, &&*t.name],
        )
        .await
        .map_err(|e| pg_err("reading pg_class", e))?;
    let Some(row) = rows.first() else {
        return Err(CdcError::Table {
            table: t.clone(),
            reason: "not found".into(),
        });
    };
    let oid: i64 = row.get(0);
    let ident: String = row.get(1);
    let cols = client
        .query(
            "SELECT attname::text, atttypid::int8 FROM pg_attribute \
             WHERE attrelid = $1::int8::oid AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            &[&oid],
        )
        .await
        .map_err(|e| pg_err("reading pg_attribute", e))?;
    let all: Vec<(String, u32)> = cols
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1) as u32))
        .collect();
    let index_cols = |cond: &'static str| {
        let sql = format!(
            "SELECT a.attname::text FROM pg_index i JOIN pg_attribute a \
             ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
             WHERE i.indrelid = $1::int8::oid AND {cond} \
             ORDER BY array_position(i.indkey::int2[], a.attnum)"
        );
        async move {
            client
                .query(&sql, &[&oid])
                .await
                .map(|rows| {
                    rows.iter()
                        .map(|r| r.get::<_, String>(0))
                        .collect::<Vec<_>>()
                })
                .map_err(|e| pg_err("reading pg_index", e))
        }
    };
    let pk = index_cols("i.indisprimary").await?;
    let key: Vec<String> = match ident.as_str() {
        "d" if !pk.is_empty() => pk,
        "i" => index_cols("i.indisreplident").await?,
        "f" if !pk.is_empty() => pk,
        "f" => all.iter().map(|(n, _)| n.clone()).collect(),
        _ => {
            return Err(CdcError::Table {
                table: t.clone(),
                reason: "has no primary key: add one, or ALTER TABLE … REPLICA IDENTITY FULL \
                         (then every column is the key)"
                    .into(),
            })
        }
    };
    let columns = match &cfg.columns {
        None => all,
        Some(list) => list
            .iter()
            .map(|c| {
                all.iter()
                    .find(|(n, _)| n == c)
                    .cloned()
                    .ok_or_else(|| CdcError::Table {
                        table: t.clone(),
                        reason: format!("no column {c:?}"),
                    })
            })
            .collect::<CdcResult<Vec<_>>>()?,
    };
    for k in &key {
        if !columns.iter().any(|(n, _)| n == k) {
            return Err(CdcError::Table {
                table: t.clone(),
                reason: format!("the column list must include key column {k:?}"),
            });
        }
    }
    Ok(TableMeta {
        cfg: cfg.clone(),
        key: key.iter().map(|k| Arc::from(k.as_str())).collect(),
        columns,
    })
}

// ---------------------------------------------------------------------------------------------
// The source
// ---------------------------------------------------------------------------------------------

/// A [`ChangeSource`] on PostgreSQL logical replication (`pgoutput`, protocol v1).
///
/// See the [crate documentation](crate) for the settings and rights it needs, the snapshot
/// hand-off, the acknowledgement rule and the failure behaviour.
pub struct PgChangeSource {
    cfg: PgSourceConfig,
    name: String,
    rx: Option<mpsc::Receiver<CdcResult<SourceEvent>>>,
    ack: watch::Sender<u64>,
    driver: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for PgChangeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgChangeSource")
            .field("name", &self.name)
            .field("running", &self.driver.is_some())
            .finish_non_exhaustive()
    }
}

impl Drop for PgChangeSource {
    fn drop(&mut self) {
        if let Some(d) = self.driver.take() {
            d.abort();
        }
    }
}

struct Conn {
    host: String,
    port: u16,
    user: String,
    password: String,
    database: String,
}

fn parse_url(url: &str) -> CdcResult<Conn> {
    let c: tokio_postgres::Config = url
        .parse()
        .map_err(|e| CdcError::Config(format!("bad PostgreSQL URL: {e}")))?;
    let host = match c.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(p)) => p.to_string_lossy().into_owned(),
        None => "localhost".into(),
    };
    let user = c
        .get_user()
        .ok_or_else(|| CdcError::Config("the URL names no user".into()))?
        .to_owned();
    Ok(Conn {
        host,
        port: c.get_ports().first().copied().unwrap_or(5432),
        password: c
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default(),
        database: c.get_dbname().unwrap_or(&user).to_owned(),
        user,
    })
}

/// The snapshot to copy before streaming.
struct SnapshotPlan {
    reason: Arc<str>,
    consistent_point: u64,
}

impl PgChangeSource {
    /// A source for `cfg`; nothing is contacted until [`ChangeSource::start`].
    ///
    /// # Errors
    /// [`CdcError::Config`] for an invalid configuration (names, filters, batch sizes).
    pub fn new(cfg: PgSourceConfig) -> CdcResult<Self> {
        cfg.validate()?;
        parse_url(&cfg.url)?;
        Ok(Self {
            name: format!("pg:{}", cfg.slot),
            cfg,
            rx: None,
            ack: watch::channel(0).0,
            driver: None,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &PgSourceConfig {
        &self.cfg
    }

    /// Drops the slot (if present and inactive) and the publication (if present): what to call
    /// when capture is retired, since a forgotten slot retains WAL for ever.
    ///
    /// # Errors
    /// [`CdcError::Unavailable`] when the server cannot be reached; server errors as in `start`.
    pub async fn drop_slot_and_publication(&mut self) -> CdcResult<()> {
        if let Some(d) = self.driver.take() {
            d.abort();
            let _ = d.await;
        }
        self.rx = None;
        let client = connect_control(&self.cfg.url).await?;
        wait_slot_inactive(&client, &self.cfg.slot).await?;
        client
            .execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                 WHERE slot_name = $1",
                &[&self.cfg.slot],
            )
            .await
            .map_err(|e| pg_err("dropping the slot", e))?;
        client
            .batch_execute(&format!(
                "DROP PUBLICATION IF EXISTS {}",
                quote_ident(&self.cfg.publication)?
            ))
            .await
            .map_err(|e| pg_err("dropping the publication", e))?;
        Ok(())
    }

    fn repl_config(&self, start_lsn: u64) -> CdcResult<ReplicationConfig> {
        let c = parse_url(&self.cfg.url)?;
        Ok(ReplicationConfig::new(
            c.host,
            c.user,
            c.password,
            c.database,
            self.cfg.slot.clone(),
            self.cfg.publication.clone(),
        )
        .with_port(c.port)
        .with_start_lsn(Lsn::from_u64(start_lsn))
        // Nothing is confirmed until `ack`: 0 is "no position" to the server.
        .with_ack_lsn(Lsn::from_u64(0))
        .with_status_interval(self.cfg.status_interval)
        .with_wakeup_interval(self.cfg.status_interval)
        .with_buffer_size(self.cfg.max_batch.clamp(64, 8192))
        .with_max_message_size(self.cfg.max_message_bytes)
        .with_application_name(format!("electric {}", self.name)))
    }

    async fn setup(&mut self, from: Option<Position>) -> CdcResult<()> {
        let resume = from.as_ref().map(checkpoint_lsn).transpose()?;
        let client = connect_control(&self.cfg.url).await?;

        // Settings and rights first: errors that name what to fix.
        let wal_level = show(&client, "wal_level").await?;
        if wal_level != "logical" {
            return Err(CdcError::Setting {
                setting: "wal_level".into(),
                actual: wal_level,
                needed: "logical (set it in postgresql.conf and restart the server)".into(),
            });
        }
        // Column lists, row filters and CREATE_REPLICATION_SLOT's option list need 15.
        let version = show(&client, "server_version_num").await?;
        if version.parse::<u32>().unwrap_or(0) < 150_000 {
            return Err(CdcError::Setting {
                setting: "server_version_num".into(),
                actual: version,
                needed: "150000 or later (PostgreSQL 15+)".into(),
            });
        }
        let rights = client
            .query_one(
                "SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user",
                &[],
            )
            .await
            .map_err(|e| pg_err("reading pg_roles", e))?;
        if !rights.get::<_, bool>(0) {
            return Err(CdcError::Permission {
                right: "REPLICATION".into(),
                detail: "the role needs REPLICATION (ALTER ROLE … REPLICATION) to stream changes"
                    .into(),
            });
        }

        let mut metas = Vec::with_capacity(self.cfg.tables.len());
        for t in &self.cfg.tables {
            metas.push(load_table(&client, t).await?);
        }
        self.ensure_publication(&client, resume.is_none()).await?;

        // The slot.
        let slot = client
            .query_opt(
                "SELECT coalesce(wal_status, ''), plugin = 'pgoutput' AND slot_type = 'logical' \
                 FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.cfg.slot],
            )
            .await
            .map_err(|e| pg_err("reading pg_replication_slots", e))?;
        let mut plan_reason: Option<&'static str> = match (&resume, &slot) {
            (None, _) => Some("initial"),
            (Some(_), None) => Some("slot missing"),
            (Some(_), Some(row)) if row.get::<_, String>(0) == "lost" => Some("slot invalidated"),
            (Some(_), Some(row)) if !row.get::<_, bool>(1) => {
                return Err(CdcError::Config(format!(
                    "slot {} exists but is not a logical pgoutput slot",
                    self.cfg.slot
                )))
            }
            _ => None,
        };
        // A checkpoint older than the slot's epoch belongs to an earlier slot (one recreated by
        // a snapshot that did not reach its checkpoint): the new slot cannot serve it.
        if plan_reason.is_none() {
            if let (Some(resume), Some(epoch)) = (resume, self.slot_epoch(&client).await?) {
                if resume < epoch {
                    plan_reason = Some("slot recreated");
                }
            }
        }

        let (ack_tx, ack_rx) = watch::channel(0u64);
        let (tx, rx) = mpsc::channel(self.cfg.buffered_batches);
        let mut repl = None;

        if plan_reason.is_none() {
            let resume_lsn = resume.unwrap_or(0);
            wait_slot_inactive(&client, &self.cfg.slot).await?;
            let mut r = ReplicationClient::connect_gated(self.repl_config(resume_lsn)?)
                .await
                .map_err(|e| wire_err("replication connect", e))?;
            let started = match r.start().await {
                Ok(()) => r.wait_started().await,
                Err(e) => Err(e),
            };
            match started.map_err(|e| wire_err("START_REPLICATION", e)) {
                Ok(()) => repl = Some(r),
                Err(CdcError::HistoryLost(why)) => {
                    tracing::warn!(slot = %self.cfg.slot, %why, "slot invalidated; re-snapshotting");
                    plan_reason = Some("slot invalidated");
                }
                Err(e) => return Err(e),
            }
        }

        let mut snapshot = None;
        if let Some(reason) = plan_reason {
            self.set_slot_epoch(&client).await?;
            if slot.is_some() || reason == "slot invalidated" {
                wait_slot_inactive(&client, &self.cfg.slot).await?;
                client
                    .execute(
                        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                         WHERE slot_name = $1",
                        &[&self.cfg.slot],
                    )
                    .await
                    .map_err(|e| pg_err("dropping the old slot", e))?;
            }
            let mut r = ReplicationClient::connect_gated(self.repl_config(0)?)
                .await
                .map_err(|e| wire_err("replication connect", e))?;
            // The slot name was validated ([a-z0-9_]); the snapshot is imported into the
            // control connection's REPEATABLE READ transaction before the walsender runs its
            // next command (START_REPLICATION), which is what keeps an exported snapshot alive.
            let rows = r
                .simple_query(&format!(
                    "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput (SNAPSHOT 'export')",
                    self.cfg.slot
                ))
                .await
                .map_err(|e| wire_err("CREATE_REPLICATION_SLOT", e))?;
            let cell = |i: usize| -> CdcResult<String> {
                rows.first()
                    .and_then(|row| row.get(i).cloned().flatten())
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .ok_or_else(|| CdcError::Malformed {
                        what: "CREATE_REPLICATION_SLOT answer",
                        reason: format!("no column {i}"),
                    })
            };
            let consistent_point = Lsn::parse(&cell(1)?)
                .map_err(|e| CdcError::Malformed {
                    what: "CREATE_REPLICATION_SLOT answer",
                    reason: format!("consistent point: {e}"),
                })?
                .as_u64();
            let snapshot_name = cell(2)?;
            if snapshot_name.is_empty()
                || !snapshot_name
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() || b == b'-')
            {
                return Err(CdcError::Malformed {
                    what: "CREATE_REPLICATION_SLOT answer",
                    reason: format!("snapshot name {snapshot_name:?}"),
                });
            }
            client
                .batch_execute(&format!(
                    "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; \
                     SET TRANSACTION SNAPSHOT '{snapshot_name}'"
                ))
                .await
                .map_err(|e| pg_err("importing the slot's snapshot", e))?;
            snapshot = Some(SnapshotPlan {
                reason: reason.into(),
                consistent_point,
            });
            repl = Some(r);
        }
        let Some(repl) = repl else {
            return Err(CdcError::Unavailable("no replication session".into()));
        };

        let resume_lsn = match &snapshot {
            Some(s) => s.consistent_point,
            None => resume.unwrap_or(0),
        };
        // A resume starts at a checkpoint the caller persisted: it counts as acknowledged, so an
        // idle resumed stream confirms keepalives at once. A snapshot must be acked first.
        let acked = if snapshot.is_some() { 0 } else { resume_lsn };
        let driver = Driver {
            cfg: self.cfg.clone(),
            client,
            repl,
            tx,
            ack_rx,
            metas,
            rels: RelationCache::default(),
            resume_lsn,
            delivered: resume_lsn,
            acked,
            last_table_check: Instant::now(),
        };
        self.ack = ack_tx;
        self.rx = Some(rx);
        self.driver = Some(tokio::spawn(driver.run(snapshot)));
        Ok(())
    }

    fn epoch_prefix(&self) -> String {
        format!("electric slot {} epoch ", self.cfg.slot)
    }

    /// Before a slot is (re)created, the publication's comment records the current WAL
    /// position: the new slot's consistent point lies after it, every checkpoint of an earlier
    /// slot before it. Written first, so no crash can leave a new slot without its epoch. Not
    /// the publication's owner: a warning, and no detection.
    async fn set_slot_epoch(&self, client: &Client) -> CdcResult<()> {
        let lsn: String = client
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .map_err(|e| pg_err("reading the WAL position", e))?
            .get(0);
        let sql = format!(
            "COMMENT ON PUBLICATION {} IS {}",
            quote_ident(&self.cfg.publication)?,
            crate::config::quote_literal(&format!("{}{lsn}", self.epoch_prefix()))?
        );
        if let Err(e) = client.batch_execute(&sql).await {
            match pg_err("recording the slot epoch", e) {
                CdcError::Permission { detail, .. } => {
                    tracing::warn!(%detail, "cannot record the slot epoch on the publication");
                }
                other => return Err(other),
            }
        }
        Ok(())
    }

    /// The slot epoch recorded on the publication, if any.
    async fn slot_epoch(&self, client: &Client) -> CdcResult<Option<u64>> {
        let row = client
            .query_opt(
                "SELECT obj_description(oid, 'pg_publication') FROM pg_publication \
                 WHERE pubname = $1",
                &[&self.cfg.publication],
            )
            .await
            .map_err(|e| pg_err("reading the slot epoch", e))?;
        let comment: Option<String> = row.and_then(|r| r.get(0));
        Ok(comment
            .as_deref()
            .and_then(|c| c.strip_prefix(&self.epoch_prefix()))
            .and_then(|lsn| Lsn::parse(lsn.trim()).ok())
            .map(Lsn::as_u64))
    }

    /// Creates the publication when missing. On a fresh start (`reset`) an existing one is set
    /// to exactly the configured tables, columns and filters; on a resume its table set must
    /// match (a changed set needs a fresh start, which re-snapshots).
    async fn ensure_publication(&self, client: &Client, reset: bool) -> CdcResult<()> {
        let exists = client
            .query_opt(
                "SELECT 1 FROM pg_publication WHERE pubname = $1",
                &[&self.cfg.publication],
            )
            .await
            .map_err(|e| pg_err("reading pg_publication", e))?
            .is_some();
        let name = quote_ident(&self.cfg.publication)?;
        let clauses = self
            .cfg
            .tables
            .iter()
            .map(TableConfig::publication_clause)
            .collect::<CdcResult<Vec<_>>>()?
            .join(", ");
        let sql = if !exists {
            format!("CREATE PUBLICATION {name} FOR TABLE {clauses}")
        } else if reset {
            format!("ALTER PUBLICATION {name} SET TABLE {clauses}")
        } else {
            let rows = client
                .query(
                    "SELECT schemaname::text, tablename::text FROM pg_publication_tables \
                     WHERE pubname = $1",
                    &[&self.cfg.publication],
                )
                .await
                .map_err(|e| pg_err("reading pg_publication_tables", e))?;
            let have: HashSet<TableName> = rows
                .iter()
                .map(|r| TableName::new(r.get::<_, String>(0), r.get::<_, String>(1)))
                .collect();
            let want: HashSet<TableName> =
                self.cfg.tables.iter().map(|t| t.table.clone()).collect();
            if have != want {
                return Err(CdcError::Config(format!(
                    "publication {} publishes {:?}, configured {:?}: start from scratch \
                     (no checkpoint) to re-snapshot with the new tables",
                    self.cfg.publication, have, want
                )));
            }
            return Ok(());
        };
        client
            .batch_execute(&sql)
            .await
            .map_err(|e| match pg_err("publication", e) {
                CdcError::Permission { detail, .. } => CdcError::Permission {
                    right: "table ownership (CREATE PUBLICATION)".into(),
                    detail,
                },
                other => other,
            })
    }
}

async fn connect_control(url: &str) -> CdcResult<Client> {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .map_err(|e| pg_err("connect", e))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!("control connection ended: {e}");
        }
    });
    Ok(client)
}

async fn show(client: &Client, setting: &str) -> CdcResult<String> {
    let rows = client
        .query_one("SELECT current_setting($1)", &[&setting])
        .await
        .map_err(|e| pg_err("reading a setting", e))?;
    Ok(rows.get(0))
}

/// A slot held by a walsender that is going away (ours, after a reconnect) is released within
/// moments; wait for that, boundedly.
async fn wait_slot_inactive(client: &Client, slot: &str) -> CdcResult<()> {
    for attempt in 0..50 {
        let row = client
            .query_opt(
                "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .map_err(|e| pg_err("reading pg_replication_slots", e))?;
        match row.and_then(|r| r.get::<_, Option<i32>>(0)) {
            None => return Ok(()),
            Some(pid) if attempt == 49 => {
                return Err(CdcError::Unavailable(format!(
                    "slot {slot} is held by backend {pid}"
                )))
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    Ok(())
}

#[async_trait]
impl ChangeSource for PgChangeSource {
    fn name(&self) -> &str {
        &self.name
    }

    async fn start(&mut self, from: Option<Position>) -> CdcResult<()> {
        if let Some(d) = self.driver.take() {
            d.abort();
            let _ = d.await;
        }
        self.rx = None;
        self.setup(from).await
    }

    async fn next(&mut self) -> CdcResult<Option<SourceEvent>> {
        let Some(rx) = self.rx.as_mut() else {
            return Err(CdcError::Closed);
        };
        match rx.recv().await {
            Some(Ok(ev)) => Ok(Some(ev)),
            Some(Err(e)) => {
                self.rx = None;
                Err(e)
            }
            None => {
                self.rx = None;
                Err(CdcError::Unavailable("replication session ended".into()))
            }
        }
    }

    async fn ack(&mut self, position: &Position) -> CdcResult<()> {
        let lsn = checkpoint_lsn(position)?;
        self.ack.send_if_modified(|cur| {
            if lsn > *cur {
                *cur = lsn;
                true
            } else {
                false
            }
        });
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The driver task: snapshot, then stream
// ---------------------------------------------------------------------------------------------

struct Txn {
    lsn: u64,
    ordinal: u64,
    items: Vec<ChangeItem>,
    /// Some items of this transaction were already sent (it is bigger than a batch).
    sent_any: bool,
    /// Already applied before the resume point: dropped.
    skip: bool,
}

struct Driver {
    cfg: PgSourceConfig,
    client: Client,
    repl: ReplicationClient,
    tx: mpsc::Sender<CdcResult<SourceEvent>>,
    ack_rx: watch::Receiver<u64>,
    metas: Vec<TableMeta>,
    rels: RelationCache,
    /// Transactions whose commit record lies before this were applied already.
    resume_lsn: u64,
    /// The resume LSN of the last checkpoint handed out.
    delivered: u64,
    /// The highest LSN acknowledged.
    acked: u64,
    last_table_check: Instant,
}

impl Driver {
    async fn run(mut self, snapshot: Option<SnapshotPlan>) {
        let res = self.run_inner(snapshot).await;
        if let Err(Some(e)) = res {
            let _ = self.tx.send(Err(e)).await;
        }
        self.repl.stop();
    }

    async fn emit(&self, ev: SourceEvent) -> Result<(), Option<CdcError>> {
        self.tx.send(Ok(ev)).await.map_err(|_| None)
    }

    async fn run_inner(&mut self, snapshot: Option<SnapshotPlan>) -> Result<(), Option<CdcError>> {
        if let Some(plan) = snapshot {
            self.copy_snapshot(&plan).await?;
            self.repl
                .start()
                .await
                .map_err(|e| Some(wire_err("START_REPLICATION", e)))?;
            self.repl
                .wait_started()
                .await
                .map_err(|e| Some(wire_err("START_REPLICATION", e)))?;
        }
        self.stream().await
    }

    async fn copy_snapshot(&mut self, plan: &SnapshotPlan) -> Result<(), Option<CdcError>> {
        let txn_lsn = plan.consistent_point.saturating_sub(1);
        let mut ordinal = 0u64;
        let metas = self.metas.clone();
        for (i, meta) in metas.iter().enumerate() {
            let table = meta.cfg.table.clone();
            self.emit(SourceEvent::SnapshotStart {
                table: table.clone(),
                reason: plan.reason.clone(),
            })
            .await?;
            let cols = meta
                .columns
                .iter()
                .map(|(n, _)| n.clone())
                .collect::<Vec<_>>();
            let mut sql = format!(
                "DECLARE electric_snapshot_{i} NO SCROLL CURSOR FOR SELECT {} FROM {}",
                meta.cfg.column_list(&cols).map_err(Some)?,
                meta.cfg.qualified().map_err(Some)?
            );
            if let Some(f) = &meta.cfg.filter {
                sql.push_str(&format!(" WHERE {}", f.to_sql().map_err(Some)?));
            }
            self.client
                .batch_execute(&sql)
                .await
                .map_err(|e| Some(pg_err("snapshot", e)))?;
            let names: Vec<Arc<str>> = cols.iter().map(|c| Arc::from(c.as_str())).collect();
            loop {
                let msgs = self
                    .client
                    .simple_query(&format!(
                        "FETCH {} FROM electric_snapshot_{i}",
                        self.cfg.max_batch
                    ))
                    .await
                    .map_err(|e| Some(pg_err("snapshot fetch", e)))?;
                let mut items = Vec::new();
                for m in msgs {
                    let SimpleQueryMessage::Row(row) = m else {
                        continue;
                    };
                    let mut columns = Vec::with_capacity(names.len());
                    for (j, (_, oid)) in meta.columns.iter().enumerate() {
                        let v = match row.get(j) {
                            None => Value::Null,
                            Some(s) => pgoutput::text_value(*oid, s.as_bytes()).map_err(Some)?,
                        };
                        columns.push((names[j].clone(), v));
                    }
                    let new = Row { columns };
                    items.push(ChangeItem {
                        position: item_position(txn_lsn, ordinal),
                        table: table.clone(),
                        op: Op::Insert,
                        key: pick_key(&table, &meta.key, &new, None).map_err(Some)?,
                        new: Some(new),
                        old: None,
                    });
                    ordinal += 1;
                }
                let n = items.len();
                if n > 0 {
                    self.emit(SourceEvent::Changes(ChangeBatch {
                        items,
                        checkpoint: None,
                    }))
                    .await?;
                }
                if n < self.cfg.max_batch {
                    break;
                }
            }
            self.client
                .batch_execute(&format!("CLOSE electric_snapshot_{i}"))
                .await
                .map_err(|e| Some(pg_err("snapshot", e)))?;
            self.emit(SourceEvent::SnapshotEnd { table }).await?;
        }
        self.client
            .batch_execute("COMMIT")
            .await
            .map_err(|e| Some(pg_err("snapshot commit", e)))?;
        self.emit(SourceEvent::Changes(ChangeBatch {
            items: Vec::new(),
            checkpoint: Some(checkpoint_position(txn_lsn, plan.consistent_point)),
        }))
        .await?;
        self.delivered = plan.consistent_point;
        Ok(())
    }

    async fn stream(&mut self) -> Result<(), Option<CdcError>> {
        let mut txn: Option<Txn> = None;
        loop {
            let next_check = self.last_table_check + self.cfg.table_check_interval;
            let ev = tokio::select! {
                biased;
                () = tokio::time::sleep_until(next_check) => {
                    self.last_table_check = Instant::now();
                    if txn.is_none() {
                        let limit = self.cfg.liveness_timeout;
                        match tokio::time::timeout(limit, self.check_tables()).await {
                            Ok(r) => r?,
                            Err(_) => {
                                return Err(Some(CdcError::Unavailable(format!(
                                    "the server did not answer a table check within {limit:?}"
                                ))))
                            }
                        }
                    }
                    continue;
                }
                changed = self.ack_rx.changed() => {
                    if changed.is_err() {
                        return Err(None);
                    }
                    let lsn = *self.ack_rx.borrow_and_update();
                    if lsn > self.acked {
                        self.acked = lsn;
                        self.repl.update_applied_lsn(Lsn::from_u64(lsn));
                    }
                    continue;
                }
                ev = self.repl.recv() => ev,
            };
            let ev = match ev {
                Ok(Some(ev)) => ev,
                Ok(None) => {
                    return Err(Some(CdcError::Unavailable(
                        "replication stream ended".into(),
                    )))
                }
                // The slot invalidated under us is no dead end: a restart re-snapshots, so it is
                // reported as retryable like any lost connection.
                Err(e) => {
                    return Err(Some(match wire_err("replication stream", e) {
                        CdcError::HistoryLost(why) => CdcError::Unavailable(format!(
                            "{why} (restart: the source re-snapshots)"
                        )),
                        other => other,
                    }))
                }
            };
            match ev {
                ReplicationEvent::Begin { final_lsn, .. } => {
                    let lsn = final_lsn.as_u64();
                    txn = Some(Txn {
                        lsn,
                        ordinal: 0,
                        items: Vec::new(),
                        sent_any: false,
                        skip: lsn < self.resume_lsn,
                    });
                }
                ReplicationEvent::XLogData { data, .. } => {
                    let msg = pgoutput::decode(&data).map_err(Some)?;
                    self.on_message(msg, txn.as_mut()).await?;
                }
                ReplicationEvent::Commit { end_lsn, .. } => {
                    let Some(t) = txn.take() else {
                        return Err(Some(CdcError::Malformed {
                            what: "replication stream",
                            reason: "Commit without Begin".into(),
                        }));
                    };
                    if t.skip || (t.items.is_empty() && !t.sent_any) {
                        continue;
                    }
                    let end = end_lsn.as_u64();
                    self.emit(SourceEvent::Changes(ChangeBatch {
                        items: t.items,
                        checkpoint: Some(checkpoint_position(t.lsn, end)),
                    }))
                    .await?;
                    self.delivered = self.delivered.max(end);
                }
                // Idle: nothing in flight and everything handed out acknowledged. The
                // keepalive's position is past every change already sent, so confirming it lets
                // the slot release WAL written for tables we do not publish.
                ReplicationEvent::KeepAlive { wal_end, .. }
                    if txn.is_none() && self.acked >= self.delivered =>
                {
                    self.repl.update_applied_lsn(wal_end);
                }
                _ => {}
            }
        }
    }

    async fn check_tables(&self) -> Result<(), Option<CdcError>> {
        for m in &self.metas {
            let name = m.cfg.qualified().map_err(Some)?;
            let row = self
                .client
                .query_one("SELECT to_regclass($1) IS NOT NULL", &[&name])
                .await
                .map_err(|e| Some(pg_err("checking tables", e)))?;
            if !row.get::<_, bool>(0) {
                return Err(Some(CdcError::Table {
                    table: m.cfg.table.clone(),
                    reason: "dropped while streaming".into(),
                }));
            }
        }
        Ok(())
    }

    fn meta_for(&self, rel: &Relation) -> Option<&TableMeta> {
        self.metas
            .iter()
            .find(|m| *m.cfg.table.schema == *rel.namespace && *m.cfg.table.name == *rel.name)
    }

    async fn on_message(
        &mut self,
        msg: Message,
        txn: Option<&mut Txn>,
    ) -> Result<(), Option<CdcError>> {
        let rel_of = |rels: &RelationCache, oid: u32| -> CdcResult<Arc<Relation>> {
            rels.get(oid).cloned().ok_or_else(|| CdcError::Malformed {
                what: "replication stream",
                reason: format!("change for relation {oid} before its Relation message"),
            })
        };
        match msg {
            Message::Relation(r) => {
                self.rels.insert(r);
                Ok(())
            }
            Message::Insert { rel, .. }
            | Message::Update { rel, .. }
            | Message::Delete { rel, .. } => {
                let Some(t) = txn else {
                    return Err(Some(CdcError::Malformed {
                        what: "replication stream",
                        reason: "row change outside a transaction".into(),
                    }));
                };
                if t.skip {
                    return Ok(());
                }
                let r = rel_of(&self.rels, rel).map_err(Some)?;
                let Some(meta) = self.meta_for(&r) else {
                    return Ok(());
                };
                let table = meta.cfg.table.clone();
                let key_cols = meta.key.clone();
                let changes = row_changes(&table, &key_cols, &r, msg).map_err(Some)?;
                for (op, key, new, old) in changes {
                    t.items.push(ChangeItem {
                        position: item_position(t.lsn, t.ordinal),
                        table: table.clone(),
                        op,
                        key,
                        new,
                        old,
                    });
                    t.ordinal += 1;
                }
                if t.items.len() >= self.cfg.max_batch {
                    let items = std::mem::take(&mut t.items);
                    t.sent_any = true;
                    self.emit(SourceEvent::Changes(ChangeBatch {
                        items,
                        checkpoint: None,
                    }))
                    .await?;
                }
                Ok(())
            }
            Message::Truncate { rels, .. } => {
                let Some(t) = txn else {
                    return Ok(());
                };
                if t.skip {
                    return Ok(());
                }
                // A truncated table is an empty snapshot: the sink removes every document.
                let mut tables = Vec::new();
                for oid in rels {
                    let r = rel_of(&self.rels, oid).map_err(Some)?;
                    if let Some(m) = self.meta_for(&r) {
                        tables.push(m.cfg.table.clone());
                    }
                }
                if tables.is_empty() {
                    return Ok(());
                }
                if !t.items.is_empty() {
                    let items = std::mem::take(&mut t.items);
                    self.emit(SourceEvent::Changes(ChangeBatch {
                        items,
                        checkpoint: None,
                    }))
                    .await?;
                }
                t.sent_any = true;
                for table in tables {
                    self.emit(SourceEvent::SnapshotStart {
                        table: table.clone(),
                        reason: "truncated".into(),
                    })
                    .await?;
                    self.emit(SourceEvent::SnapshotEnd { table }).await?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

type RowChange = (Op, Row, Option<Row>, Option<Row>);

fn to_row(rel: &Relation, t: &Tuple) -> CdcResult<Row> {
    Ok(Row {
        columns: RelationCache::row(rel, t)?,
    })
}

/// The key columns of `row`; a key value the server did not send (unchanged TOAST) is taken
/// from `fallback` (the old key or row).
fn pick_key(
    table: &TableName,
    key: &[Arc<str>],
    row: &Row,
    fallback: Option<&Row>,
) -> CdcResult<Row> {
    let mut columns = Vec::with_capacity(key.len());
    for k in key {
        let mut v = row.get(k);
        if matches!(v, Some(Value::Unchanged) | None) {
            if let Some(f) = fallback.and_then(|f| f.get(k)) {
                v = Some(f);
            }
        }
        match v {
            Some(v) => columns.push((k.clone(), v.clone())),
            None => {
                return Err(CdcError::Table {
                    table: table.clone(),
                    reason: format!("key column {k:?} is not in the replicated row"),
                })
            }
        }
    }
    Ok(Row { columns })
}

/// The changes one row message makes. An update that changes the key is a delete of the old key
/// and an insert of the new row, so a document store keyed by it stays right.
pub(crate) fn row_changes(
    table: &TableName,
    key: &[Arc<str>],
    rel: &Relation,
    msg: Message,
) -> CdcResult<Vec<RowChange>> {
    Ok(match msg {
        Message::Insert { new, .. } => {
            let new = to_row(rel, &new)?;
            vec![(
                Op::Insert,
                pick_key(table, key, &new, None)?,
                Some(new),
                None,
            )]
        }
        Message::Update {
            key: old_key,
            old,
            new,
            ..
        } => {
            let mut new = to_row(rel, &new)?;
            let old = old.map(|o| to_row(rel, &o)).transpose()?;
            // With REPLICA IDENTITY FULL the old row carries the (detoasted) values the new
            // tuple left out as unchanged: use them, so the new row is complete.
            if let Some(o) = &old {
                for (name, v) in &mut new.columns {
                    if matches!(v, Value::Unchanged) {
                        if let Some(known) = o.get(name).filter(|x| !matches!(x, Value::Unchanged))
                        {
                            *v = known.clone();
                        }
                    }
                }
            }
            let old_key_row = old_key.map(|k| to_row(rel, &k)).transpose()?;
            let before = old.as_ref().or(old_key_row.as_ref());
            let new_key = pick_key(table, key, &new, before)?;
            match before {
                Some(b) => {
                    let old_key = pick_key(table, key, b, None)?;
                    if old_key != new_key {
                        vec![
                            (Op::Delete, old_key, None, old.clone()),
                            (Op::Insert, new_key, Some(new), None),
                        ]
                    } else {
                        vec![(Op::Update, new_key, Some(new), old)]
                    }
                }
                None => vec![(Op::Update, new_key, Some(new), old)],
            }
        }
        Message::Delete { key: k, old, .. } => {
            let old = old.map(|o| to_row(rel, &o)).transpose()?;
            let k = k.map(|k| to_row(rel, &k)).transpose()?;
            let Some(src) = old.as_ref().or(k.as_ref()) else {
                return Err(CdcError::Malformed {
                    what: "pgoutput delete",
                    reason: "no key or old tuple".into(),
                });
            };
            vec![(Op::Delete, pick_key(table, key, src, None)?, None, old)]
        }
        _ => Vec::new(),
    })
}

/// One decoded change of a captured stream: operation, table, key, new row, old row.
pub type CapturedChange = (Op, TableName, Row, Option<Row>, Option<Row>);

/// Decodes captured pgoutput messages (e.g. from `pg_logical_slot_peek_binary_changes`) into
/// changes for `tables` (name → key columns), exactly as the stream does. Used by the tests on
/// captured vectors; also handy for diagnosing a captured stream.
///
/// # Errors
/// [`CdcError::Malformed`] for bytes that do not decode or a change before its relation.
pub fn decode_captured(
    messages: &[Vec<u8>],
    tables: &HashMap<TableName, Vec<Arc<str>>>,
) -> CdcResult<Vec<CapturedChange>> {
    let mut rels = RelationCache::default();
    let mut out = Vec::new();
    for m in messages {
        let msg = pgoutput::decode(m)?;
        match &msg {
            Message::Relation(r) => rels.insert(r.clone()),
            Message::Insert { rel, .. }
            | Message::Update { rel, .. }
            | Message::Delete { rel, .. } => {
                let r = rels.get(*rel).cloned().ok_or_else(|| CdcError::Malformed {
                    what: "captured stream",
                    reason: format!("relation {rel} unknown"),
                })?;
                let t = TableName::new(r.namespace.as_str(), r.name.as_str());
                if let Some(key) = tables.get(&t) {
                    for (op, k, new, old) in row_changes(&t, key, &r, msg)? {
                        out.push((op, t.clone(), k, new, old));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_sort_items_then_checkpoint_then_next_transaction() {
        let a0 = item_position(100, 0);
        let a1 = item_position(100, 1);
        let ca = checkpoint_position(100, 180);
        let b0 = item_position(180, 0);
        assert!(a0 < a1 && a1 < ca && ca < b0);
        assert_eq!(checkpoint_lsn(&ca).unwrap(), 180);
        assert!(matches!(
            checkpoint_lsn(&a0),
            Err(CdcError::BadPosition { .. })
        ));
        assert!(checkpoint_lsn(&Position::from_bytes(vec![1, 2])).is_err());
    }

    #[test]
    fn full_identity_fills_unchanged_values_and_a_key_change_splits() {
        use crate::pgoutput::{RelColumn, TupleValue};
        let rel = Relation {
            oid: 1,
            namespace: "public".into(),
            name: "t".into(),
            replica_identity: b'f',
            columns: ["id", "big"]
                .iter()
                .map(|n| RelColumn {
                    key: true,
                    name: (*n).into(),
                    type_oid: if *n == "id" { 23 } else { 25 },
                    type_mod: -1,
                })
                .collect(),
        };
        let t = TableName::new("public", "t");
        let key: Vec<Arc<str>> = vec!["id".into()];
        let text = |s: &str| TupleValue::Text(s.as_bytes().to_vec());
        let msg = Message::Update {
            rel: 1,
            key: None,
            old: Some(vec![text("1"), text("long value")]),
            new: vec![text("2"), TupleValue::Unchanged],
        };
        let changes = row_changes(&t, &key, &rel, msg).unwrap();
        assert_eq!(changes.len(), 2);
        assert_eq!(changes[0].0, Op::Delete);
        assert_eq!(changes[0].1.get("id"), Some(&Value::Int(1)));
        let (op, k, new, _) = &changes[1];
        assert_eq!((*op, k.get("id")), (Op::Insert, Some(&Value::Int(2))));
        assert_eq!(
            new.as_ref().unwrap().get("big"),
            Some(&Value::Text("long value".into())),
            "the unchanged value comes from the full old row"
        );
        // Without an old row (REPLICA IDENTITY DEFAULT) it stays Unchanged.
        let msg = Message::Update {
            rel: 1,
            key: None,
            old: None,
            new: vec![text("2"), TupleValue::Unchanged],
        };
        let changes = row_changes(&t, &key, &rel, msg).unwrap();
        assert_eq!(changes[0].0, Op::Update);
        assert_eq!(
            changes[0].2.as_ref().unwrap().get("big"),
            Some(&Value::Unchanged)
        );
    }

    #[test]
    fn server_errors_are_classified() {
        assert!(matches!(
            classify(Some("55000"), "logical decoding requires wal_level >= logical".into()),
            CdcError::Setting { ref setting, .. } if setting == "wal_level"
        ));
        assert!(matches!(
            classify(Some("42501"), "must be superuser or replication role to start walsender".into()),
            CdcError::Permission { ref right, .. } if right == "REPLICATION"
        ));
        assert!(matches!(
            classify(
                Some("55000"),
                "can no longer get changes from replication slot \"s\"".into()
            ),
            CdcError::HistoryLost(_)
        ));
        assert!(classify(Some("57P01"), "terminating connection".into()).is_retryable());
        assert_eq!(sqlstate_of("boom (SQLSTATE 42501)"), Some("42501"));
    }
}
