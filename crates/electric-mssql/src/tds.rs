//! [`TiberiusBackend`]: the [`CtBackend`] on a real SQL Server, through `tiberius` 0.13 (TDS 7.3,
//! rustls) over a tokio `TcpStream` (`tokio_util::compat`).
//!
//! **Not run against a real server**: no SQL Server runs where this was written. It compiles,
//! is linted, and its integration tests (`tests/mssql_live.rs`) run when
//! `ELECTRIC_TEST_MSSQL_URL` is set.
//!
//! One backend is one connection. The read transaction is begun with a TDS transaction-manager
//! request asking for `SNAPSHOT` isolation and committed the same way; afterwards the session is
//! set back to `READ COMMITTED`. Every statement is an `sp_executesql` RPC with `@Pn` parameters
//! built by [`crate::sql`]. After an I/O error or a [`CtBackend::reset`] the connection is
//! dropped and the next call reconnects.
//!
//! Column types map to [`Value`]: integers → `Int`, `bit` → `Bool`, `real`/`float` → `Float`,
//! strings → `Text`, binary → `Bytes`; `decimal`/`numeric`, `uniqueidentifier`, `xml` and the
//! date/time types → `Text` in ISO 8601 form (`2026-12-02T14:08:00.1234567`, offsets as
//! `+01:00`), which SQL Server converts back when such a key is bound as a page cursor.
//!
//! tiberius 0.13 defaults worth knowing: encryption `Required`, a 15 s handshake and a 30 s
//! command timeout (set them on the [`tiberius::Config`] passed to [`TiberiusBackend::new`]).

use async_trait::async_trait;
use electric_core::cdc::{CdcError, CdcResult, Value};
use tiberius::{Client, ColumnData, Config, IsolationLevel, Query, Row};
use tokio::net::TcpStream;
use tokio_util::compat::{Compat, TokioAsyncWriteCompatExt};

use crate::backend::{ChangeRow, CtBackend, DbSettings, ScanRow, TableInfo};
use crate::ident::{Ident, TableRef};
use crate::sql::{self, Param, Sql, TableQuery};

type Conn = Client<Compat<TcpStream>>;

/// The [`CtBackend`] on SQL Server.
pub struct TiberiusBackend {
    config: Config,
    client: Option<Conn>,
    in_tx: bool,
}

impl TiberiusBackend {
    /// A backend that connects on first use with `config`.
    pub fn new(config: Config) -> Self {
        Self {
            config,
            client: None,
            in_tx: false,
        }
    }

    /// A backend from an ADO.NET connection string (`server=tcp:host,1433;user=…;password=…;
    /// database=…;TrustServerCertificate=true`).
    ///
    /// # Errors
    /// [`CdcError::Config`] when the string does not parse.
    pub fn from_ado_string(s: &str) -> CdcResult<Self> {
        let config = Config::from_ado_string(s)
            .map_err(|e| CdcError::Config(format!("connection string: {e}")))?;
        Ok(Self::new(config))
    }

    /// Connects now (otherwise the first call does).
    ///
    /// # Errors
    /// [`CdcError::Unavailable`] when the server cannot be reached; [`CdcError::Permission`]
    /// when the login is refused.
    pub async fn connect(&mut self) -> CdcResult<()> {
        self.client().await.map(|_| ())
    }

    async fn client(&mut self) -> CdcResult<&mut Conn> {
        if self.client.is_none() {
            let tcp = TcpStream::connect(self.config.get_addr())
                .await
                .map_err(|e| {
                    CdcError::Unavailable(format!("connect {}: {e}", self.config.get_addr()))
                })?;
            tcp.set_nodelay(true)
                .map_err(|e| CdcError::Unavailable(format!("set_nodelay: {e}")))?;
            let client = Client::connect(self.config.clone(), tcp.compat_write())
                .await
                .map_err(map_err)?;
            self.client = Some(client);
            self.in_tx = false;
        }
        Ok(self.client.as_mut().expect("connected"))
    }

    /// Drops the connection after an error that may have left it mid-response.
    fn check<T>(&mut self, r: Result<T, tiberius::error::Error>) -> CdcResult<T> {
        r.map_err(|e| {
            if matches!(
                e,
                tiberius::error::Error::Io { .. } | tiberius::error::Error::Protocol(_)
            ) {
                self.client = None;
                self.in_tx = false;
            }
            map_err(e)
        })
    }

    async fn rows(&mut self, sql: &Sql) -> CdcResult<Vec<Row>> {
        let mut q = Query::new(sql.text.clone());
        for p in &sql.params {
            match p {
                Param::Bool(b) => q.bind(*b),
                Param::Int(i) => q.bind(*i),
                Param::Float(f) => q.bind(*f),
                Param::Text(s) => q.bind(s.clone()),
                Param::Bytes(b) => q.bind(b.clone()),
            }
        }
        let client = self.client().await?;
        let r = match q.query(client).await {
            Ok(stream) => stream.into_first_result().await,
            Err(e) => Err(e),
        };
        self.check(r)
    }

    async fn simple(&mut self, text: &str) -> CdcResult<()> {
        let client = self.client().await?;
        let r = match client.simple_query(text).await {
            Ok(s) => s.into_results().await.map(|_| ()),
            Err(e) => Err(e),
        };
        self.check(r)
    }

    async fn single_version(&mut self, sql: &Sql) -> CdcResult<Option<u64>> {
        let rows = self.rows(sql).await?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        match cell(row, 0)? {
            Value::Null => Ok(None),
            Value::Int(v) => version(v).map(Some),
            other => Err(CdcError::Malformed {
                what: "change tracking version",
                reason: format!("{other:?} is not a bigint"),
            }),
        }
    }
}

fn version(v: i64) -> CdcResult<u64> {
    u64::try_from(v).map_err(|_| CdcError::Malformed {
        what: "change tracking version",
        reason: format!("negative version {v}"),
    })
}

/// Maps tiberius errors onto [`CdcError`]: transport and transient server errors are
/// retryable [`CdcError::Unavailable`]; rights and settings are named.
fn map_err(e: tiberius::error::Error) -> CdcError {
    use tiberius::error::Error as E;
    match e {
        E::Io { kind, message } => CdcError::Unavailable(format!("i/o ({kind:?}): {message}")),
        E::Routing { host, port } => {
            CdcError::Unavailable(format!("server redirected to {host}:{port}"))
        }
        E::Tls(m) => CdcError::Unavailable(format!("tls: {m}")),
        E::Server(t) => {
            let (code, msg) = (t.code(), t.message().to_string());
            match code {
                // Login failed; permission denied on an object / VIEW CHANGE TRACKING.
                18456 | 229 | 230 | 297 | 300 | 916 => CdcError::Permission {
                    right: if msg.contains("CHANGE TRACKING") {
                        "VIEW CHANGE TRACKING".into()
                    } else {
                        "SELECT / CONNECT".into()
                    },
                    detail: format!("{code}: {msg}"),
                },
                // Snapshot isolation not allowed in this database.
                3952 => CdcError::Setting {
                    setting: "ALLOW_SNAPSHOT_ISOLATION".into(),
                    actual: "OFF".into(),
                    needed: format!("ON ({code}: {msg})"),
                },
                // Change tracking not enabled on the table / database.
                4998 | 22105 => CdcError::Setting {
                    setting: "CHANGE_TRACKING".into(),
                    actual: "OFF".into(),
                    needed: format!("ON ({code}: {msg})"),
                },
                // Deadlock victim, lock timeout, snapshot conflicts, resource limits.
                1205 | 1222 | 3960 | 3961 | 701 | 8645 => {
                    CdcError::Unavailable(format!("{code}: {msg}"))
                }
                // Invalid object or column (dropped or altered mid-stream); the caller names
                // the table.
                208 | 207 => CdcError::Table {
                    table: electric_core::cdc::TableName::new("?", "?"),
                    reason: format!("{code}: {msg}"),
                },
                _ if t.class() >= 17 => CdcError::Unavailable(format!("{code}: {msg}")),
                _ => CdcError::Malformed {
                    what: "sql server reply",
                    reason: format!("error {code} (class {}): {msg}", t.class()),
                },
            }
        }
        other => CdcError::Malformed {
            what: "tds stream",
            reason: other.to_string(),
        },
    }
}

/// Names `table` in a [`CdcError::Table`] raised without one (invalid object or column).
fn with_table(e: CdcError, table: &TableRef) -> CdcError {
    match e {
        CdcError::Table { reason, .. } => CdcError::Table {
            table: table.table_name(),
            reason,
        },
        e => e,
    }
}

fn cell(row: &Row, i: usize) -> CdcResult<Value> {
    let (_, data) = row.cells().nth(i).ok_or_else(|| CdcError::Malformed {
        what: "change tracking row",
        reason: format!("no column {i} (row has {})", row.len()),
    })?;
    Ok(to_value(data))
}

fn to_value(d: &ColumnData<'_>) -> Value {
    use ColumnData as C;
    fn opt<T>(v: &Option<T>, f: impl FnOnce(&T) -> Value) -> Value {
        v.as_ref().map_or(Value::Null, f)
    }
    match d {
        C::U8(v) => opt(v, |x| Value::Int((*x).into())),
        C::I16(v) => opt(v, |x| Value::Int((*x).into())),
        C::I32(v) => opt(v, |x| Value::Int((*x).into())),
        C::I64(v) => opt(v, |x| Value::Int(*x)),
        C::F32(v) => opt(v, |x| float(f64::from(*x))),
        C::F64(v) => opt(v, |x| float(*x)),
        C::Bit(v) => opt(v, |x| Value::Bool(*x)),
        C::String(v) => opt(v, |x| Value::Text(x.to_string())),
        C::Guid(v) => opt(v, |x| Value::Text(x.to_string())),
        C::Binary(v) => opt(v, |x| Value::Bytes(x.to_vec())),
        C::Numeric(v) => opt(v, |x| Value::Text(x.to_string())),
        C::Xml(v) => opt(v, |x| Value::Text(x.to_string())),
        C::DateTime(v) => opt(v, |x| {
            // Days since 1900-01-01, 1/300 s since midnight.
            let ticks = u64::from(x.seconds_fragments());
            let nanos = ticks * 1_000_000_000 / 300;
            Value::Text(format!(
                "{}T{}",
                date_text(i64::from(x.days()) - DAYS_1900),
                time_text(nanos, 3)
            ))
        }),
        C::SmallDateTime(v) => opt(v, |x| {
            let nanos = u64::from(x.seconds_fragments()) * 60 * 1_000_000_000;
            Value::Text(format!(
                "{}T{}",
                date_text(i64::from(x.days()) - DAYS_1900),
                time_text(nanos, 0)
            ))
        }),
        C::Time(v) => opt(v, |x| Value::Text(time_text(time_nanos(*x), x.scale()))),
        C::Date(v) => opt(v, |x| {
            Value::Text(date_text(i64::from(x.days()) - DAYS_0001))
        }),
        C::DateTime2(v) => opt(v, |x| Value::Text(datetime2_text(*x, 0))),
        C::DateTimeOffset(v) => opt(v, |x| {
            let off = x.offset();
            let sign = if off < 0 { '-' } else { '+' };
            let a = off.unsigned_abs();
            Value::Text(format!(
                "{}{sign}{:02}:{:02}",
                datetime2_text(x.datetime2(), i64::from(off)),
                a / 60,
                a % 60
            ))
        }),
    }
}

fn float(f: f64) -> Value {
    if f.is_finite() {
        Value::Float(f)
    } else {
        Value::Text(f.to_string())
    }
}

/// Days from 1900-01-01 / 0001-01-01 to 1970-01-01.
const DAYS_1900: i64 = 25_567;
const DAYS_0001: i64 = 719_162;

fn time_nanos(t: tiberius::time::Time) -> u64 {
    let scale = u32::from(t.scale().min(7));
    t.increments() * 10u64.pow(9 - scale)
}

/// `datetime2` (UTC for `datetimeoffset`) shifted by `offset_minutes`, as local text.
fn datetime2_text(dt: tiberius::time::DateTime2, offset_minutes: i64) -> String {
    const DAY: i64 = 86_400_000_000_000;
    let t = dt.time();
    let nanos = time_nanos(t) as i64 + offset_minutes * 60_000_000_000;
    let days = i64::from(dt.date().days()) - DAYS_0001 + nanos.div_euclid(DAY);
    format!(
        "{}T{}",
        date_text(days),
        time_text(nanos.rem_euclid(DAY) as u64, t.scale())
    )
}

/// `YYYY-MM-DD` for days since 1970-01-01 (H. Hinnant's `civil_from_days`).
fn date_text(days: i64) -> String {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// `HH:MM:SS[.f…]` with `scale` fraction digits.
fn time_text(nanos: u64, scale: u8) -> String {
    let secs = nanos / 1_000_000_000;
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = format!("{h:02}:{m:02}:{s:02}");
    let scale = u32::from(scale.min(7));
    if scale > 0 {
        let frac = (nanos % 1_000_000_000) / 10u64.pow(9 - scale);
        out.push_str(&format!(".{frac:0width$}", width = scale as usize));
    }
    out
}

fn int_cell(row: &Row, i: usize) -> CdcResult<i64> {
    match cell(row, i)? {
        Value::Int(v) => Ok(v),
        other => Err(CdcError::Malformed {
            what: "catalog row",
            reason: format!("column {i} is {other:?}, expected an integer"),
        }),
    }
}

fn cursor(after: Option<&[Value]>) -> CdcResult<Option<Vec<Param>>> {
    after
        .map(|a| {
            a.iter()
                .map(|v| match v {
                    Value::Bool(b) => Ok(Param::Bool(*b)),
                    Value::Int(i) => Ok(Param::Int(*i)),
                    Value::Float(f) => Ok(Param::Float(*f)),
                    Value::Text(s) => Ok(Param::Text(s.clone())),
                    Value::Bytes(b) => Ok(Param::Bytes(b.clone())),
                    other => Err(CdcError::Malformed {
                        what: "page cursor",
                        reason: format!("a key value {other:?} cannot be bound"),
                    }),
                })
                .collect()
        })
        .transpose()
}

fn values(row: &Row, from: usize, n: usize) -> CdcResult<Vec<Value>> {
    (from..from + n).map(|i| cell(row, i)).collect()
}

#[async_trait]
impl CtBackend for TiberiusBackend {
    async fn database_settings(&mut self) -> CdcResult<DbSettings> {
        let rows = self.rows(&sql::database_settings_sql()).await?;
        let row = rows.first().ok_or_else(|| CdcError::Malformed {
            what: "catalog row",
            reason: "sys.databases has no row for DB_ID()".into(),
        })?;
        Ok(DbSettings {
            // snapshot_isolation_state: 1 = ON.
            snapshot_isolation: int_cell(row, 0)? == 1,
            change_tracking: int_cell(row, 1)? == 1,
        })
    }

    async fn describe(&mut self, table: &TableRef) -> CdcResult<Option<TableInfo>> {
        let rows = self.rows(&sql::describe_sql(table)).await?;
        if rows.is_empty() {
            return Ok(None);
        }
        let mut columns = Vec::with_capacity(rows.len());
        let mut key: Vec<(i64, Ident)> = Vec::new();
        let mut tracked = false;
        for row in &rows {
            let Value::Text(name) = cell(row, 0)? else {
                return Err(CdcError::Malformed {
                    what: "catalog row",
                    reason: "column name is not text".into(),
                });
            };
            // A column whose name we could not quote safely cannot be tracked.
            let id = Ident::new(&name).map_err(|_| CdcError::Table {
                table: table.table_name(),
                reason: format!(
                    "column {name:?} is not a plain identifier (letters, digits, '_'); rename it or list other columns"
                ),
            });
            let ord = int_cell(row, 1)?;
            tracked = int_cell(row, 2)? == 1;
            match id {
                Ok(id) => {
                    if ord > 0 {
                        key.push((ord, id.clone()));
                    }
                    columns.push(id);
                }
                Err(e) if ord > 0 => return Err(e),
                // Skipped: it can still be tracked without that column being reported.
                Err(_) => {}
            }
        }
        key.sort_by_key(|(o, _)| *o);
        Ok(Some(TableInfo {
            columns,
            key: key.into_iter().map(|(_, k)| k).collect(),
            change_tracking: tracked,
        }))
    }

    async fn current_version(&mut self) -> CdcResult<Option<u64>> {
        self.single_version(&sql::current_version_sql()).await
    }

    async fn begin_snapshot(&mut self) -> CdcResult<()> {
        let client = self.client().await?;
        let r = client
            .begin_transaction_with_isolation(IsolationLevel::Snapshot)
            .await;
        self.check(r)?;
        self.in_tx = true;
        Ok(())
    }

    async fn min_valid_version(&mut self, table: &TableRef) -> CdcResult<Option<u64>> {
        self.single_version(&sql::min_valid_version_sql(table))
            .await
    }

    async fn changes_since(
        &mut self,
        q: &TableQuery,
        since: u64,
        after: Option<&[Value]>,
        limit: usize,
    ) -> CdcResult<Vec<ChangeRow>> {
        let since = i64::try_from(since).map_err(|_| CdcError::BadPosition {
            reason: format!("version {since} exceeds bigint"),
        })?;
        let after = cursor(after)?;
        let text = sql::changes_sql(q, since, after.as_deref(), limit)?;
        let rows = self
            .rows(&text)
            .await
            .map_err(|e| with_table(e, &q.spec.table))?;
        let (k, n) = (q.key.len(), q.column_names().len());
        rows.iter()
            .map(|r| {
                if r.len() != k + 3 + n {
                    return Err(CdcError::Malformed {
                        what: "change tracking row",
                        reason: format!("{} columns, expected {}", r.len(), k + 3 + n),
                    });
                }
                Ok(ChangeRow {
                    key: values(r, 0, k)?,
                    present: matches!(cell(r, k)?, Value::Int(1)),
                    version: cell(r, k + 1)?,
                    operation: cell(r, k + 2)?,
                    columns: values(r, k + 3, n)?,
                })
            })
            .collect()
    }

    async fn full_scan(
        &mut self,
        q: &TableQuery,
        after: Option<&[Value]>,
        limit: usize,
    ) -> CdcResult<Vec<ScanRow>> {
        let after = cursor(after)?;
        let text = sql::scan_sql(q, after.as_deref(), limit)?;
        let rows = self
            .rows(&text)
            .await
            .map_err(|e| with_table(e, &q.spec.table))?;
        let (k, n) = (q.key.len(), q.column_names().len());
        rows.iter()
            .map(|r| {
                if r.len() != k + n {
                    return Err(CdcError::Malformed {
                        what: "scan row",
                        reason: format!("{} columns, expected {}", r.len(), k + n),
                    });
                }
                Ok(ScanRow {
                    key: values(r, 0, k)?,
                    columns: values(r, k, n)?,
                })
            })
            .collect()
    }

    async fn commit(&mut self) -> CdcResult<()> {
        let client = self.client().await?;
        let r = client.commit_transaction().await;
        self.check(r)?;
        self.in_tx = false;
        self.simple(sql::RESET_ISOLATION_SQL).await
    }

    async fn rollback(&mut self) -> CdcResult<()> {
        if !self.in_tx || self.client.is_none() {
            self.in_tx = false;
            return Ok(());
        }
        self.in_tx = false;
        let client = self.client().await?;
        let r = client.rollback_transaction().await;
        if let Err(e) = self.check(r) {
            // A broken session cannot hold a transaction: drop it.
            self.client = None;
            return Err(e);
        }
        self.simple(sql::RESET_ISOLATION_SQL).await
    }

    async fn reset(&mut self) -> CdcResult<()> {
        self.client = None;
        self.in_tx = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_times_format_as_iso_8601() {
        assert_eq!(date_text(0), "1970-01-01");
        assert_eq!(date_text(-DAYS_0001), "0001-01-01");
        assert_eq!(date_text(-DAYS_1900), "1900-01-01");
        assert_eq!(date_text(20_424), "2025-12-02");
        assert_eq!(date_text(11_016), "2000-02-29");
        assert_eq!(time_text(0, 0), "00:00:00");
        assert_eq!(time_text(50_400_123_456_700, 7), "14:00:00.1234567");
        assert_eq!(time_text(50_400_123_456_700, 3), "14:00:00.123");
        let dt = tiberius::time::DateTime2::new(
            tiberius::time::Date::new((DAYS_0001 + 20_424) as u32),
            tiberius::time::Time::new(23 * 3600 * 100 + 30 * 60 * 100, 2),
        );
        assert_eq!(datetime2_text(dt, 0), "2025-12-02T23:30:00.00");
        // UTC 23:30 at +01:00 is 00:30 the next day, local.
        assert_eq!(datetime2_text(dt, 60), "2025-12-03T00:30:00.00");
        let v = to_value(&ColumnData::DateTimeOffset(Some(
            tiberius::time::DateTimeOffset::new(dt, -90),
        )));
        assert_eq!(v, Value::Text("2025-12-02T22:00:00.00-01:30".into()));
        let v = to_value(&ColumnData::DateTime(Some(tiberius::time::DateTime::new(
            (DAYS_1900 + 20_424) as i32,
            300 * 3600 + 150,
        ))));
        assert_eq!(v, Value::Text("2025-12-02T01:00:00.500".into()));
    }

    #[test]
    fn values_map_by_type() {
        assert_eq!(to_value(&ColumnData::I32(Some(7))), Value::Int(7));
        assert_eq!(to_value(&ColumnData::I64(None)), Value::Null);
        assert_eq!(to_value(&ColumnData::Bit(Some(true))), Value::Bool(true));
        assert_eq!(
            to_value(&ColumnData::F64(Some(f64::NAN))),
            Value::Text("NaN".into())
        );
        assert_eq!(
            to_value(&ColumnData::Numeric(Some(
                tiberius::numeric::Numeric::new_with_scale(12345, 2)
            ))),
            Value::Text("123.45".into())
        );
        assert!(matches!(
            cursor(Some(&[Value::Null])),
            Err(CdcError::Malformed { .. })
        ));
    }

    #[test]
    fn server_errors_are_classified() {
        assert!(map_err(tiberius::error::Error::Io {
            kind: std::io::ErrorKind::ConnectionReset,
            message: "reset".into()
        })
        .is_retryable());
        assert!(matches!(
            map_err(tiberius::error::Error::Conversion("x".into())),
            CdcError::Malformed { .. }
        ));
    }
}
