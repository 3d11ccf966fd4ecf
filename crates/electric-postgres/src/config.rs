//! What to capture: the connection, the slot and publication, the tables with optional column
//! lists and row filters. Every name is validated and quoted; filter literals are quoted; no user
//! text is ever concatenated into SQL raw.

use std::fmt::Write as _;
use std::time::Duration;

use electric_core::cdc::{CdcError, CdcResult, TableName};

/// Quotes an identifier for SQL (`"a""b"`). Refuses empty names, NUL bytes and names over 63
/// bytes (PostgreSQL would silently truncate them).
///
/// # Errors
/// [`CdcError::Config`].
pub fn quote_ident(name: &str) -> CdcResult<String> {
    if name.is_empty() || name.len() > 63 || name.contains('\0') {
        return Err(CdcError::Config(format!(
            "identifier {name:?} must be 1-63 bytes without NUL"
        )));
    }
    Ok(format!("\"{}\"", name.replace('"', "\"\"")))
}

/// Quotes a string literal (`'it''s'`, or `E'a\\b'` when it holds a backslash).
///
/// # Errors
/// [`CdcError::Config`] for a NUL byte.
pub fn quote_literal(s: &str) -> CdcResult<String> {
    if s.contains('\0') {
        return Err(CdcError::Config("literal contains NUL".into()));
    }
    let body = s.replace('\'', "''");
    Ok(if body.contains('\\') {
        format!("E'{}'", body.replace('\\', "\\\\"))
    } else {
        format!("'{body}'")
    })
}

/// Slot and publication names: `[a-z0-9_]{1,63}` (what PostgreSQL allows for slots; the same
/// rule for publications keeps `publication_names` unambiguous).
///
/// # Errors
/// [`CdcError::Config`].
pub fn check_object_name(kind: &str, name: &str) -> CdcResult<()> {
    if name.is_empty()
        || name.len() > 63
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(CdcError::Config(format!(
            "{kind} name {name:?} must be 1-63 characters of a-z, 0-9 and _"
        )));
    }
    Ok(())
}

/// A literal in a [`RowFilter`].
#[derive(Clone, Debug, PartialEq)]
pub enum Literal {
    /// An integer.
    Int(i64),
    /// A boolean.
    Bool(bool),
    /// Text (quoted; PostgreSQL casts it to the column's type).
    Text(String),
}

impl Literal {
    fn render(&self) -> CdcResult<String> {
        Ok(match self {
            Literal::Int(i) => i.to_string(),
            Literal::Bool(b) => b.to_string(),
            Literal::Text(s) => quote_literal(s)?,
        })
    }
}

/// A comparison operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpOp {
    /// `=`
    Eq,
    /// `<>`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

/// A row filter, built from columns and literals (so it can be quoted safely) and rendered into
/// both the publication's `WHERE (…)` (PostgreSQL 15) and the snapshot's `WHERE`, so snapshot and
/// stream see the same rows. PostgreSQL requires the columns of a filter to be in the replica
/// identity when updates and deletes are published.
#[derive(Clone, Debug, PartialEq)]
pub enum RowFilter {
    /// `column <op> literal`
    Cmp(String, CmpOp, Literal),
    /// `column IS NULL`
    IsNull(String),
    /// `column IS NOT NULL`
    IsNotNull(String),
    /// All of them.
    And(Vec<RowFilter>),
    /// Any of them.
    Or(Vec<RowFilter>),
    /// Not.
    Not(Box<RowFilter>),
}

impl RowFilter {
    /// The filter as SQL.
    ///
    /// # Errors
    /// [`CdcError::Config`] for a bad identifier or literal, or an empty `And`/`Or`.
    pub fn to_sql(&self) -> CdcResult<String> {
        Ok(match self {
            RowFilter::Cmp(c, op, lit) => {
                let op = match op {
                    CmpOp::Eq => "=",
                    CmpOp::Ne => "<>",
                    CmpOp::Lt => "<",
                    CmpOp::Le => "<=",
                    CmpOp::Gt => ">",
                    CmpOp::Ge => ">=",
                };
                format!("{} {op} {}", quote_ident(c)?, lit.render()?)
            }
            RowFilter::IsNull(c) => format!("{} IS NULL", quote_ident(c)?),
            RowFilter::IsNotNull(c) => format!("{} IS NOT NULL", quote_ident(c)?),
            RowFilter::And(v) | RowFilter::Or(v) => {
                if v.is_empty() {
                    return Err(CdcError::Config("empty AND/OR in a row filter".into()));
                }
                let sep = if matches!(self, RowFilter::And(_)) {
                    " AND "
                } else {
                    " OR "
                };
                let parts = v
                    .iter()
                    .map(|f| Ok(format!("({})", f.to_sql()?)))
                    .collect::<CdcResult<Vec<_>>>()?;
                parts.join(sep)
            }
            RowFilter::Not(f) => format!("NOT ({})", f.to_sql()?),
        })
    }
}

/// One table to capture.
#[derive(Clone, Debug, PartialEq)]
pub struct TableConfig {
    /// Schema and name.
    pub table: TableName,
    /// Only these columns (a PostgreSQL 15 column list); `None`: all. Must include the key.
    pub columns: Option<Vec<String>>,
    /// Only rows matching this (a PostgreSQL 15 row filter).
    pub filter: Option<RowFilter>,
}

impl TableConfig {
    /// All columns and rows of `schema.name`.
    pub fn new(schema: &str, name: &str) -> Self {
        Self {
            table: TableName::new(schema, name),
            columns: None,
            filter: None,
        }
    }

    /// Only these columns.
    pub fn with_columns<S: Into<String>>(mut self, columns: impl IntoIterator<Item = S>) -> Self {
        self.columns = Some(columns.into_iter().map(Into::into).collect());
        self
    }

    /// Only rows matching `filter`.
    pub fn with_filter(mut self, filter: RowFilter) -> Self {
        self.filter = Some(filter);
        self
    }

    /// `"schema"."name"`.
    pub(crate) fn qualified(&self) -> CdcResult<String> {
        Ok(format!(
            "{}.{}",
            quote_ident(&self.table.schema)?,
            quote_ident(&self.table.name)?
        ))
    }

    /// The publication's table clause: `"s"."t" ("a", "b") WHERE (…)`.
    pub(crate) fn publication_clause(&self) -> CdcResult<String> {
        let mut s = self.qualified()?;
        if let Some(cols) = &self.columns {
            s.push_str(&format!(" ({})", self.column_list(cols)?));
        }
        if let Some(f) = &self.filter {
            let _ = write!(s, " WHERE ({})", f.to_sql()?);
        }
        Ok(s)
    }

    pub(crate) fn column_list(&self, cols: &[String]) -> CdcResult<String> {
        if cols.is_empty() {
            return Err(CdcError::Config(format!(
                "{}: an empty column list",
                self.table
            )));
        }
        Ok(cols
            .iter()
            .map(|c| quote_ident(c))
            .collect::<CdcResult<Vec<_>>>()?
            .join(", "))
    }
}

/// The configuration of a [`PgChangeSource`](crate::PgChangeSource).
#[derive(Clone, Debug)]
pub struct PgSourceConfig {
    /// `postgres://user:password@host:port/database` (`host` may be a socket directory).
    pub url: String,
    /// The replication slot (created when missing): `[a-z0-9_]{1,63}`.
    pub slot: String,
    /// The publication (created when missing): `[a-z0-9_]{1,63}`.
    pub publication: String,
    /// The tables.
    pub tables: Vec<TableConfig>,
    /// At most this many items per [`ChangeBatch`](electric_core::cdc::ChangeBatch) (snapshot
    /// and stream); a bigger transaction arrives as several batches, checkpointed on the last.
    pub max_batch: usize,
    /// Batches buffered between the stream and [`next`](electric_core::cdc::ChangeSource::next)
    /// (memory is bounded by `max_batch × buffered_batches` rows plus the transport's buffer).
    pub buffered_batches: usize,
    /// How often standby status (the confirmed position) is sent to the server.
    pub status_interval: Duration,
    /// How often, at most, the source checks on an idle stream that its tables still exist.
    pub table_check_interval: Duration,
    /// The largest single protocol message (one row) accepted, in bytes.
    pub max_message_bytes: usize,
    /// A table check unanswered for this long ends the stream with `Unavailable`: a frozen
    /// server (or network) raises no error by itself.
    pub liveness_timeout: Duration,
}

impl PgSourceConfig {
    /// Defaults: batches of 1,000, 4 buffered, status every second, table check every 5 s
    /// (unanswered for 30 s: unavailable), rows up to 64 MiB.
    pub fn new(
        url: impl Into<String>,
        slot: impl Into<String>,
        publication: impl Into<String>,
        tables: Vec<TableConfig>,
    ) -> Self {
        Self {
            url: url.into(),
            slot: slot.into(),
            publication: publication.into(),
            tables,
            max_batch: 1000,
            buffered_batches: 4,
            status_interval: Duration::from_secs(1),
            table_check_interval: Duration::from_secs(5),
            max_message_bytes: 64 << 20,
            liveness_timeout: Duration::from_secs(30),
        }
    }

    /// Batches of at most `n` items.
    pub fn with_max_batch(mut self, n: usize) -> Self {
        self.max_batch = n;
        self
    }

    /// Checks everything that can be checked without a server.
    ///
    /// # Errors
    /// [`CdcError::Config`].
    pub fn validate(&self) -> CdcResult<()> {
        check_object_name("slot", &self.slot)?;
        check_object_name("publication", &self.publication)?;
        if self.tables.is_empty() {
            return Err(CdcError::Config("no tables configured".into()));
        }
        if self.max_batch == 0 || self.buffered_batches == 0 {
            return Err(CdcError::Config(
                "max_batch and buffered_batches must be at least 1".into(),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for t in &self.tables {
            t.publication_clause()?;
            if !seen.insert(&t.table) {
                return Err(CdcError::Config(format!("table {} listed twice", t.table)));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_literals_are_quoted_never_pasted() {
        assert_eq!(quote_ident("a\"b").unwrap(), "\"a\"\"b\"");
        assert!(quote_ident("").is_err());
        assert!(quote_ident(&"x".repeat(64)).is_err());
        assert_eq!(quote_literal("it's").unwrap(), "'it''s'");
        assert_eq!(quote_literal("a\\'b").unwrap(), "E'a\\\\''b'");
        assert!(check_object_name("slot", "ok_1").is_ok());
        for bad in ["", "Upper", "a-b", "a b", "x'; DROP TABLE t; --"] {
            assert!(check_object_name("slot", bad).is_err(), "{bad}");
        }
        let t = TableConfig::new("public", "t\"x")
            .with_columns(["id", "v"])
            .with_filter(RowFilter::And(vec![
                RowFilter::Cmp("v".into(), CmpOp::Ne, Literal::Text("'; DROP".into())),
                RowFilter::Not(Box::new(RowFilter::IsNull("id".into()))),
            ]));
        assert_eq!(
            t.publication_clause().unwrap(),
            r#""public"."t""x" ("id", "v") WHERE (("v" <> '''; DROP') AND (NOT ("id" IS NULL)))"#
        );
        assert!(RowFilter::Or(vec![]).to_sql().is_err());
    }

    #[test]
    fn validate_refuses_bad_configs_before_any_io() {
        let ok = PgSourceConfig::new("postgres://x", "s", "p", vec![TableConfig::new("a", "b")]);
        assert!(ok.validate().is_ok());
        let mut c = ok.clone();
        c.slot = "Bad".into();
        assert!(matches!(c.validate(), Err(CdcError::Config(_))));
        let mut c = ok.clone();
        c.tables.push(TableConfig::new("a", "b"));
        assert!(c.validate().is_err());
        let c = ok.clone().with_max_batch(0);
        assert!(c.validate().is_err());
        let mut c = ok;
        c.tables[0] = TableConfig::new("a", "b").with_columns(Vec::<String>::new());
        assert!(c.validate().is_err());
    }
}
