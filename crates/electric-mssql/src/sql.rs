//! The original's options as typed values, and the SQL built from them.
//!
//! The original `TrackChangesAsync` spliced five strings into its query: selected columns, an
//! extra filter (a raw `WHERE`/`JOIN` tail), a CTE prefix, and the version and operation
//! expressions. Here each is a typed value:
//!
//! | original | here |
//! |---|---|
//! | `selectColumns` | [`TrackedTable::columns`]: validated column names |
//! | `extraFilter` | [`Filter`]: comparisons of validated columns with **bound parameters**, `AND`/`OR`/`NOT`, `IS NULL`, `IN` |
//! | `sqlBeforeSelect` (a `WITH` prefix) | [`Lookup`]: a named CTE over another table (validated columns, a [`Filter`]), joined on equal columns |
//! | `changeVersionIdSelect` | [`TrackedTable::version_expr`]: a [`ChangeColumn`] |
//! | `changeOperationSelect` | [`TrackedTable::operation_expr`]: a [`ChangeColumn`] |
//!
//! Every name in the SQL text is an [`Ident`] in brackets; every value is a `@Pn` parameter.
//! No user text is ever concatenated into SQL.
//!
//! The filter is applied to the *current* row, in the `LEFT JOIN`'s `ON` clause of the changes
//! query: a changed row that no longer matches reads as absent, so it is reported as a delete
//! (it left the tracked set). Deletes of keys that never matched are harmless. The full scan
//! applies the same filter in `WHERE`.
//!
//! Changes to a [`Lookup`]'s table do not produce changes (only the tracked table's do), as in
//! the original.

use std::fmt::Write as _;

use electric_core::cdc::{CdcError, CdcResult};

use crate::ident::{Ident, TableRef};

/// The most parameters one statement may carry (SQL Server allows 2,100).
pub const MAX_PARAMS: usize = 2_000;
/// The most values in one [`Filter::is_in`].
pub const MAX_IN_VALUES: usize = 1_000;
/// How deeply [`Filter`]s may nest.
pub const MAX_FILTER_DEPTH: usize = 32;

/// The alias of `CHANGETABLE(…)` in every changes query.
pub const CT_ALIAS: &str = "ct";
/// The alias of the tracked table in every query.
pub const TABLE_ALIAS: &str = "t";

/// A bound parameter value.
#[derive(Clone, Debug, PartialEq)]
pub enum Param {
    /// `bit`.
    Bool(bool),
    /// `bigint`.
    Int(i64),
    /// `float`.
    Float(f64),
    /// `nvarchar`.
    Text(String),
    /// `varbinary`.
    Bytes(Vec<u8>),
}

impl From<bool> for Param {
    fn from(v: bool) -> Self {
        Self::Bool(v)
    }
}
impl From<i64> for Param {
    fn from(v: i64) -> Self {
        Self::Int(v)
    }
}
impl From<i32> for Param {
    fn from(v: i32) -> Self {
        Self::Int(v.into())
    }
}
impl From<f64> for Param {
    fn from(v: f64) -> Self {
        Self::Float(v)
    }
}
impl From<&str> for Param {
    fn from(v: &str) -> Self {
        Self::Text(v.into())
    }
}
impl From<String> for Param {
    fn from(v: String) -> Self {
        Self::Text(v)
    }
}
impl From<Vec<u8>> for Param {
    fn from(v: Vec<u8>) -> Self {
        Self::Bytes(v)
    }
}

/// A comparison operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
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

impl CmpOp {
    fn sql(self) -> &'static str {
        match self {
            Self::Eq => "=",
            Self::Ne => "<>",
            Self::Lt => "<",
            Self::Le => "<=",
            Self::Gt => ">",
            Self::Ge => ">=",
        }
    }
}

/// A row filter: the original's `extraFilter`, as a tree of validated columns and bound values.
#[derive(Clone, Debug, PartialEq)]
pub enum Filter {
    /// `column op @p`.
    Cmp {
        /// The column (of the table the filter applies to).
        column: Ident,
        /// The operator.
        op: CmpOp,
        /// The bound value.
        value: Param,
    },
    /// `column IS NULL`.
    IsNull(Ident),
    /// `column IS NOT NULL`.
    IsNotNull(Ident),
    /// `column IN (@p, …)`; 1 to [`MAX_IN_VALUES`] values.
    In {
        /// The column.
        column: Ident,
        /// The values.
        values: Vec<Param>,
    },
    /// All of them (at least one).
    And(Vec<Filter>),
    /// Any of them (at least one).
    Or(Vec<Filter>),
    /// `NOT (…)`.
    Not(Box<Filter>),
}

impl Filter {
    /// `column op value`.
    ///
    /// # Errors
    /// [`CdcError::Config`] when `column` is not a valid identifier.
    pub fn cmp(column: &str, op: CmpOp, value: impl Into<Param>) -> CdcResult<Self> {
        Ok(Self::Cmp {
            column: Ident::new(column)?,
            op,
            value: value.into(),
        })
    }

    /// `column = value`.
    ///
    /// # Errors
    /// As [`Filter::cmp`].
    pub fn eq(column: &str, value: impl Into<Param>) -> CdcResult<Self> {
        Self::cmp(column, CmpOp::Eq, value)
    }

    /// `column IN (values…)`.
    ///
    /// # Errors
    /// [`CdcError::Config`] for an invalid column, no values or more than [`MAX_IN_VALUES`].
    pub fn is_in<P: Into<Param>>(
        column: &str,
        values: impl IntoIterator<Item = P>,
    ) -> CdcResult<Self> {
        let values: Vec<Param> = values.into_iter().map(Into::into).collect();
        if values.is_empty() || values.len() > MAX_IN_VALUES {
            return Err(CdcError::Config(format!(
                "IN on {column:?} needs 1 to {MAX_IN_VALUES} values, got {}",
                values.len()
            )));
        }
        Ok(Self::In {
            column: Ident::new(column)?,
            values,
        })
    }

    /// `column IS NULL`.
    ///
    /// # Errors
    /// [`CdcError::Config`] when `column` is not a valid identifier.
    pub fn is_null(column: &str) -> CdcResult<Self> {
        Ok(Self::IsNull(Ident::new(column)?))
    }

    /// `column IS NOT NULL`.
    ///
    /// # Errors
    /// [`CdcError::Config`] when `column` is not a valid identifier.
    pub fn is_not_null(column: &str) -> CdcResult<Self> {
        Ok(Self::IsNotNull(Ident::new(column)?))
    }

    /// `self AND other`.
    pub fn and(self, other: Filter) -> Self {
        match self {
            Self::And(mut v) => {
                v.push(other);
                Self::And(v)
            }
            f => Self::And(vec![f, other]),
        }
    }

    /// `self OR other`.
    pub fn or(self, other: Filter) -> Self {
        match self {
            Self::Or(mut v) => {
                v.push(other);
                Self::Or(v)
            }
            f => Self::Or(vec![f, other]),
        }
    }

    /// `NOT self`.
    #[allow(clippy::should_implement_trait)]
    pub fn not(self) -> Self {
        Self::Not(Box::new(self))
    }

    /// Every column the filter names.
    pub fn columns(&self) -> Vec<&Ident> {
        let mut out = Vec::new();
        self.collect_columns(&mut out);
        out
    }

    fn collect_columns<'a>(&'a self, out: &mut Vec<&'a Ident>) {
        match self {
            Self::Cmp { column, .. }
            | Self::IsNull(column)
            | Self::IsNotNull(column)
            | Self::In { column, .. } => out.push(column),
            Self::And(v) | Self::Or(v) => v.iter().for_each(|f| f.collect_columns(out)),
            Self::Not(f) => f.collect_columns(out),
        }
    }

    fn validate(&self, depth: usize) -> CdcResult<()> {
        if depth > MAX_FILTER_DEPTH {
            return Err(CdcError::Config(format!(
                "filter nests deeper than {MAX_FILTER_DEPTH}"
            )));
        }
        match self {
            Self::And(v) | Self::Or(v) if v.is_empty() => {
                Err(CdcError::Config("empty AND/OR in a filter".into()))
            }
            Self::And(v) | Self::Or(v) => v.iter().try_for_each(|f| f.validate(depth + 1)),
            Self::Not(f) => f.validate(depth + 1),
            Self::In { values, .. } if values.is_empty() || values.len() > MAX_IN_VALUES => Err(
                CdcError::Config(format!("IN needs 1 to {MAX_IN_VALUES} values")),
            ),
            Self::Cmp {
                value: Param::Float(f),
                ..
            } if !f.is_finite() => {
                Err(CdcError::Config("a filter value is NaN or infinite".into()))
            }
            _ => Ok(()),
        }
    }

    fn render(&self, alias: &str, w: &mut SqlWriter) {
        let col = |c: &Ident| format!("[{alias}].{}", c.quoted());
        match self {
            Self::Cmp { column, op, value } => {
                let p = w.param(value.clone());
                let _ = write!(w.text, "{} {} {p}", col(column), op.sql());
            }
            Self::IsNull(c) => {
                let _ = write!(w.text, "{} IS NULL", col(c));
            }
            Self::IsNotNull(c) => {
                let _ = write!(w.text, "{} IS NOT NULL", col(c));
            }
            Self::In { column, values } => {
                let _ = write!(w.text, "{} IN (", col(column));
                for (i, v) in values.iter().enumerate() {
                    if i > 0 {
                        w.text.push_str(", ");
                    }
                    let p = w.param(v.clone());
                    w.text.push_str(&p);
                }
                w.text.push(')');
            }
            Self::And(v) | Self::Or(v) => {
                let joiner = if matches!(self, Self::And(_)) {
                    " AND "
                } else {
                    " OR "
                };
                for (i, f) in v.iter().enumerate() {
                    if i > 0 {
                        w.text.push_str(joiner);
                    }
                    w.text.push('(');
                    f.render(alias, w);
                    w.text.push(')');
                }
            }
            Self::Not(f) => {
                w.text.push_str("NOT (");
                f.render(alias, w);
                w.text.push(')');
            }
        }
    }
}

/// The original's `sqlBeforeSelect` (a `WITH` prefix), made safe: a named common table
/// expression over another table, `LEFT JOIN`ed to the tracked row on equal columns. Its columns
/// arrive in each row as `<name>.<column>`.
#[derive(Clone, Debug, PartialEq)]
pub struct Lookup {
    /// The CTE's name (not `ct` or `t`, which the queries use).
    pub name: Ident,
    /// The table it reads.
    pub source: TableRef,
    /// The columns it exposes (at least one).
    pub columns: Vec<Ident>,
    /// Which of its rows it keeps.
    pub filter: Option<Filter>,
    /// `(lookup column, tracked table column)` pairs joined with `=` (at least one). The lookup
    /// columns must be among [`Lookup::columns`].
    pub on: Vec<(Ident, Ident)>,
}

impl Lookup {
    /// A lookup named `name` over `source` exposing `columns`, joined on `on`.
    ///
    /// # Errors
    /// [`CdcError::Config`] for invalid names, a reserved name, no columns, no join pair, or a
    /// join column the lookup does not expose.
    pub fn new(name: &str, source: &str, columns: &[&str], on: &[(&str, &str)]) -> CdcResult<Self> {
        let name = Ident::new(name)?;
        let l = Self {
            name,
            source: TableRef::parse(source)?,
            columns: columns
                .iter()
                .map(|c| Ident::new(c))
                .collect::<CdcResult<_>>()?,
            filter: None,
            on: on
                .iter()
                .map(|(a, b)| Ok((Ident::new(a)?, Ident::new(b)?)))
                .collect::<CdcResult<_>>()?,
        };
        l.validate()?;
        Ok(l)
    }

    /// Keeps only the source rows matching `filter`.
    pub fn filter(mut self, filter: Filter) -> Self {
        self.filter = Some(filter);
        self
    }

    fn validate(&self) -> CdcResult<()> {
        let n = self.name.as_str();
        if n.eq_ignore_ascii_case(CT_ALIAS) || n.eq_ignore_ascii_case(TABLE_ALIAS) {
            return Err(CdcError::Config(format!(
                "lookup name {n:?} is reserved (the queries alias CHANGETABLE as ct and the table as t)"
            )));
        }
        if self.columns.is_empty() {
            return Err(CdcError::Config(format!("lookup {n} exposes no column")));
        }
        if self.on.is_empty() {
            return Err(CdcError::Config(format!("lookup {n} has no join column")));
        }
        if let Some((c, _)) = self.on.iter().find(|(c, _)| !self.columns.contains(c)) {
            return Err(CdcError::Config(format!(
                "lookup {n} joins on {c}, which it does not expose"
            )));
        }
        if let Some(f) = &self.filter {
            f.validate(0)?;
        }
        Ok(())
    }
}

/// A column usable as the version or operation expression (the original's
/// `changeVersionIdSelect` / `changeOperationSelect`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ChangeColumn {
    /// `[ct].[SYS_CHANGE_VERSION]` (the default version).
    ChangeVersion,
    /// `[ct].[SYS_CHANGE_CREATION_VERSION]`.
    CreationVersion,
    /// `[ct].[SYS_CHANGE_OPERATION]` (the default operation).
    ChangeOperation,
    /// A column of the tracked table's current row.
    Column(Ident),
    /// A column of the [`Lookup`].
    Lookup(Ident),
}

impl ChangeColumn {
    /// A column of the tracked table.
    ///
    /// # Errors
    /// [`CdcError::Config`] when `name` is not a valid identifier.
    pub fn column(name: &str) -> CdcResult<Self> {
        Ok(Self::Column(Ident::new(name)?))
    }

    /// A column of the lookup.
    ///
    /// # Errors
    /// [`CdcError::Config`] when `name` is not a valid identifier.
    pub fn lookup(name: &str) -> CdcResult<Self> {
        Ok(Self::Lookup(Ident::new(name)?))
    }

    fn render(&self, lookup: Option<&Lookup>) -> CdcResult<String> {
        Ok(match self {
            Self::ChangeVersion => format!("[{CT_ALIAS}].[SYS_CHANGE_VERSION]"),
            Self::CreationVersion => format!("[{CT_ALIAS}].[SYS_CHANGE_CREATION_VERSION]"),
            Self::ChangeOperation => format!("[{CT_ALIAS}].[SYS_CHANGE_OPERATION]"),
            Self::Column(c) => format!("[{TABLE_ALIAS}].{}", c.quoted()),
            Self::Lookup(c) => {
                let l = lookup.ok_or_else(|| {
                    CdcError::Config(format!(
                        "expression uses lookup column {c} but no lookup is set"
                    ))
                })?;
                if !l.columns.contains(c) {
                    return Err(CdcError::Config(format!(
                        "expression uses {c}, which lookup {} does not expose",
                        l.name
                    )));
                }
                format!("{}.{}", l.name.quoted(), c.quoted())
            }
        })
    }
}

/// One table to track, with the original's options.
#[derive(Clone, Debug, PartialEq)]
pub struct TrackedTable {
    /// The table (change tracking must be enabled on it; it needs a primary key).
    pub table: TableRef,
    /// The columns reported in each row (`None`: every column, in table order).
    pub columns: Option<Vec<Ident>>,
    /// Which current rows belong to the tracked set.
    pub filter: Option<Filter>,
    /// A joined lookup (the original's CTE prefix).
    pub lookup: Option<Lookup>,
    /// The version expression (default [`ChangeColumn::ChangeVersion`]).
    pub version_expr: ChangeColumn,
    /// The operation expression (default [`ChangeColumn::ChangeOperation`]).
    pub operation_expr: ChangeColumn,
    /// Whether upserts carry the version and operation as columns `SYS_CHANGE_VERSION` and
    /// `SYS_CHANGE_OPERATION` (as the original's `ChangeItem` did). Off by default.
    pub change_columns: bool,
}

impl TrackedTable {
    /// Tracks `table` (`schema.table` or `table`), every column, no filter.
    ///
    /// # Errors
    /// [`CdcError::Config`] for an invalid name.
    pub fn new(table: &str) -> CdcResult<Self> {
        Ok(Self {
            table: TableRef::parse(table)?,
            columns: None,
            filter: None,
            lookup: None,
            version_expr: ChangeColumn::ChangeVersion,
            operation_expr: ChangeColumn::ChangeOperation,
            change_columns: false,
        })
    }

    /// Reports only `columns` (the key columns are always in [`ChangeItem::key`]).
    ///
    /// # Errors
    /// [`CdcError::Config`] for an invalid name, no column or a repeated one.
    ///
    /// [`ChangeItem::key`]: electric_core::cdc::ChangeItem::key
    pub fn columns(mut self, columns: &[&str]) -> CdcResult<Self> {
        let cols: Vec<Ident> = columns
            .iter()
            .map(|c| Ident::new(c))
            .collect::<CdcResult<_>>()?;
        if cols.is_empty() {
            return Err(CdcError::Config(format!(
                "{}: empty column list",
                self.table
            )));
        }
        for (i, c) in cols.iter().enumerate() {
            if cols[..i].contains(c) {
                return Err(CdcError::Config(format!(
                    "{}: column {c} listed twice",
                    self.table
                )));
            }
        }
        self.columns = Some(cols);
        Ok(self)
    }

    /// Keeps only current rows matching `filter` (others read as deleted).
    pub fn filter(mut self, filter: Filter) -> Self {
        self.filter = Some(filter);
        self
    }

    /// Joins `lookup`.
    pub fn lookup(mut self, lookup: Lookup) -> Self {
        self.lookup = Some(lookup);
        self
    }

    /// Sets the version expression.
    pub fn version_expr(mut self, expr: ChangeColumn) -> Self {
        self.version_expr = expr;
        self
    }

    /// Sets the operation expression.
    pub fn operation_expr(mut self, expr: ChangeColumn) -> Self {
        self.operation_expr = expr;
        self
    }

    /// Adds `SYS_CHANGE_VERSION` and `SYS_CHANGE_OPERATION` to every upsert's columns.
    pub fn with_change_columns(mut self) -> Self {
        self.change_columns = true;
        self
    }

    /// Checks what can be checked without the server.
    ///
    /// # Errors
    /// [`CdcError::Config`].
    pub fn validate(&self) -> CdcResult<()> {
        if let Some(f) = &self.filter {
            f.validate(0)?;
        }
        if let Some(l) = &self.lookup {
            l.validate()?;
        }
        self.version_expr.render(self.lookup.as_ref())?;
        self.operation_expr.render(self.lookup.as_ref())?;
        Ok(())
    }
}

/// A tracked table resolved against the server's catalog: what the queries need.
#[derive(Clone, Debug, PartialEq)]
pub struct TableQuery {
    /// The configuration.
    pub spec: TrackedTable,
    /// The primary-key columns, in key order.
    pub key: Vec<Ident>,
    /// The reported columns of the tracked table.
    pub columns: Vec<Ident>,
}

impl TableQuery {
    /// Resolves `spec` against the table's `key` and `all_columns`, checking every name the
    /// options use exists. `lookup_columns` are the lookup source's columns, when there is one.
    ///
    /// # Errors
    /// [`CdcError::Table`] for a missing primary key or an unknown column; [`CdcError::Config`]
    /// for invalid options.
    pub fn resolve(
        spec: &TrackedTable,
        key: &[Ident],
        all_columns: &[Ident],
        lookup_columns: Option<&[Ident]>,
    ) -> CdcResult<Self> {
        spec.validate()?;
        let table_err = |reason: String| CdcError::Table {
            table: spec.table.table_name(),
            reason,
        };
        if key.is_empty() {
            return Err(table_err(
                "no primary key: change tracking needs one".into(),
            ));
        }
        let has = |c: &Ident| all_columns.contains(c);
        let columns = match &spec.columns {
            Some(cols) => cols.clone(),
            None => all_columns.to_vec(),
        };
        let mut named: Vec<&Ident> = columns.iter().chain(key).collect();
        if let Some(f) = &spec.filter {
            named.extend(f.columns());
        }
        if let Some(l) = &spec.lookup {
            named.extend(l.on.iter().map(|(_, c)| c));
        }
        for e in [&spec.version_expr, &spec.operation_expr] {
            if let ChangeColumn::Column(c) = e {
                named.push(c);
            }
        }
        if let Some(c) = named.into_iter().find(|c| !has(c)) {
            return Err(table_err(format!("unknown column {c}")));
        }
        if let Some(l) = &spec.lookup {
            let lcols = lookup_columns.unwrap_or(&[]);
            let mut lnamed: Vec<&Ident> = l.columns.iter().collect();
            if let Some(f) = &l.filter {
                lnamed.extend(f.columns());
            }
            if let Some(c) = lnamed.into_iter().find(|c| !lcols.contains(c)) {
                return Err(CdcError::Table {
                    table: l.source.table_name(),
                    reason: format!("unknown column {c} (lookup {})", l.name),
                });
            }
        }
        Ok(Self {
            spec: spec.clone(),
            key: key.to_vec(),
            columns,
        })
    }

    /// The names of each row's reported columns: the table's, then `lookup.column`s.
    pub fn column_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.columns.iter().map(|c| c.to_string()).collect();
        if let Some(l) = &self.spec.lookup {
            names.extend(l.columns.iter().map(|c| format!("{}.{c}", l.name)));
        }
        names
    }
}

/// SQL text with its bound parameters (`@P1`, `@P2`, … in order).
#[derive(Clone, Debug, PartialEq)]
pub struct Sql {
    /// The statement.
    pub text: String,
    /// The parameters, `params[0]` is `@P1`.
    pub params: Vec<Param>,
}

struct SqlWriter {
    text: String,
    params: Vec<Param>,
}

impl SqlWriter {
    fn new() -> Self {
        Self {
            text: String::with_capacity(256),
            params: Vec::new(),
        }
    }

    fn param(&mut self, p: Param) -> String {
        self.params.push(p);
        format!("@P{}", self.params.len())
    }

    fn finish(self) -> CdcResult<Sql> {
        if self.params.len() > MAX_PARAMS {
            return Err(CdcError::Config(format!(
                "query needs {} parameters; at most {MAX_PARAMS}",
                self.params.len()
            )));
        }
        Ok(Sql {
            text: self.text,
            params: self.params,
        })
    }
}

fn write_lookup_cte(l: &Lookup, w: &mut SqlWriter) {
    let _ = write!(w.text, "WITH {} AS (SELECT ", l.name.quoted());
    let cols: Vec<String> = l.columns.iter().map(Ident::quoted).collect();
    w.text.push_str(&cols.join(", "));
    let _ = write!(w.text, " FROM {} AS [s]", l.source.quoted());
    if let Some(f) = &l.filter {
        w.text.push_str(" WHERE ");
        f.render("s", w);
    }
    w.text.push_str(") ");
}

fn write_lookup_join(l: &Lookup, w: &mut SqlWriter) {
    let _ = write!(w.text, " LEFT JOIN {} ON ", l.name.quoted());
    let on: Vec<String> =
        l.on.iter()
            .map(|(lc, tc)| {
                format!(
                    "{}.{} = [{TABLE_ALIAS}].{}",
                    l.name.quoted(),
                    lc.quoted(),
                    tc.quoted()
                )
            })
            .collect();
    w.text.push_str(&on.join(" AND "));
}

fn write_selected(q: &TableQuery, w: &mut SqlWriter) {
    for c in &q.columns {
        let _ = write!(w.text, ", [{TABLE_ALIAS}].{}", c.quoted());
    }
    if let Some(l) = &q.spec.lookup {
        for c in &l.columns {
            let _ = write!(w.text, ", {}.{}", l.name.quoted(), c.quoted());
        }
    }
}

/// Keyset pagination: `(k1 > @a) OR (k1 = @a AND k2 > @b) …` over `alias`'s key columns.
fn write_after(alias: &str, key: &[Ident], after: &[Param], w: &mut SqlWriter) {
    w.text.push('(');
    for i in 0..key.len() {
        if i > 0 {
            w.text.push_str(" OR ");
        }
        w.text.push('(');
        for j in 0..i {
            let p = w.param(after[j].clone());
            let _ = write!(w.text, "[{alias}].{} = {p} AND ", key[j].quoted());
        }
        let p = w.param(after[i].clone());
        let _ = write!(w.text, "[{alias}].{} > {p})", key[i].quoted());
    }
    w.text.push(')');
}

fn write_order(alias: &str, key: &[Ident], w: &mut SqlWriter) {
    let cols: Vec<String> = key
        .iter()
        .map(|k| format!("[{alias}].{}", k.quoted()))
        .collect();
    let _ = write!(w.text, " ORDER BY {}", cols.join(", "));
}

fn check_after(q: &TableQuery, after: Option<&[Param]>) -> CdcResult<()> {
    match after {
        Some(a) if a.len() != q.key.len() => Err(CdcError::Config(format!(
            "{}: page cursor has {} values for {} key columns",
            q.spec.table,
            a.len(),
            q.key.len()
        ))),
        _ => Ok(()),
    }
}

/// One page of `CHANGETABLE(CHANGES t, @since)` joined to the current rows, in key order, after
/// the key `after` (exclusive).
///
/// Columns: the key (from `CHANGETABLE`), present (`1` when the current row exists and matches
/// the filter, else `0`), version, operation, the reported columns, the lookup's columns.
///
/// # Errors
/// [`CdcError::Config`] for a cursor of the wrong width or too many parameters.
pub fn changes_sql(
    q: &TableQuery,
    since: i64,
    after: Option<&[Param]>,
    limit: usize,
) -> CdcResult<Sql> {
    check_after(q, after)?;
    let mut w = SqlWriter::new();
    let lookup = q.spec.lookup.as_ref();
    if let Some(l) = lookup {
        write_lookup_cte(l, &mut w);
    }
    let top = w.param(Param::Int(limit as i64));
    let _ = write!(w.text, "SELECT TOP ({top}) ");
    let keys: Vec<String> = q
        .key
        .iter()
        .map(|k| format!("[{CT_ALIAS}].{}", k.quoted()))
        .collect();
    w.text.push_str(&keys.join(", "));
    let _ = write!(
        w.text,
        ", CASE WHEN [{TABLE_ALIAS}].{} IS NULL THEN 0 ELSE 1 END, {}, {}",
        q.key[0].quoted(),
        q.spec.version_expr.render(lookup)?,
        q.spec.operation_expr.render(lookup)?
    );
    write_selected(q, &mut w);
    let since_p = w.param(Param::Int(since));
    let _ = write!(
        w.text,
        " FROM CHANGETABLE(CHANGES {}, {since_p}) AS [{CT_ALIAS}] LEFT JOIN {} AS [{TABLE_ALIAS}] ON ",
        q.spec.table.quoted(),
        q.spec.table.quoted()
    );
    let on: Vec<String> = q
        .key
        .iter()
        .map(|k| {
            format!(
                "[{TABLE_ALIAS}].{} = [{CT_ALIAS}].{}",
                k.quoted(),
                k.quoted()
            )
        })
        .collect();
    w.text.push_str(&on.join(" AND "));
    if let Some(f) = &q.spec.filter {
        w.text.push_str(" AND (");
        f.render(TABLE_ALIAS, &mut w);
        w.text.push(')');
    }
    if let Some(l) = lookup {
        write_lookup_join(l, &mut w);
    }
    if let Some(a) = after {
        w.text.push_str(" WHERE ");
        write_after(CT_ALIAS, &q.key, a, &mut w);
    }
    write_order(CT_ALIAS, &q.key, &mut w);
    w.finish()
}

/// One page of the full scan (the resync), in key order, after the key `after` (exclusive).
///
/// Columns: the key, the reported columns, the lookup's columns.
///
/// # Errors
/// As [`changes_sql`].
pub fn scan_sql(q: &TableQuery, after: Option<&[Param]>, limit: usize) -> CdcResult<Sql> {
    check_after(q, after)?;
    let mut w = SqlWriter::new();
    if let Some(l) = &q.spec.lookup {
        write_lookup_cte(l, &mut w);
    }
    let top = w.param(Param::Int(limit as i64));
    let _ = write!(w.text, "SELECT TOP ({top}) ");
    let keys: Vec<String> = q
        .key
        .iter()
        .map(|k| format!("[{TABLE_ALIAS}].{}", k.quoted()))
        .collect();
    w.text.push_str(&keys.join(", "));
    write_selected(q, &mut w);
    let _ = write!(w.text, " FROM {} AS [{TABLE_ALIAS}]", q.spec.table.quoted());
    if let Some(l) = &q.spec.lookup {
        write_lookup_join(l, &mut w);
    }
    let mut clauses = 0;
    if let Some(f) = &q.spec.filter {
        w.text.push_str(" WHERE (");
        f.render(TABLE_ALIAS, &mut w);
        w.text.push(')');
        clauses += 1;
    }
    if let Some(a) = after {
        w.text
            .push_str(if clauses == 0 { " WHERE " } else { " AND " });
        write_after(TABLE_ALIAS, &q.key, a, &mut w);
    }
    write_order(TABLE_ALIAS, &q.key, &mut w);
    w.finish()
}

/// `SELECT CHANGE_TRACKING_CURRENT_VERSION()`.
pub fn current_version_sql() -> Sql {
    Sql {
        text: "SELECT CHANGE_TRACKING_CURRENT_VERSION()".into(),
        params: vec![],
    }
}

/// `SELECT CHANGE_TRACKING_MIN_VALID_VERSION(OBJECT_ID(@P1))`, the quoted name bound.
pub fn min_valid_version_sql(table: &TableRef) -> Sql {
    Sql {
        text: "SELECT CHANGE_TRACKING_MIN_VALID_VERSION(OBJECT_ID(@P1))".into(),
        params: vec![Param::Text(table.quoted())],
    }
}

/// Run after the read transaction ends (the transaction itself is begun, committed and rolled
/// back with TDS transaction-manager requests, `SNAPSHOT` isolation requested in the begin), so
/// the session's autocommit reads use the default level again.
pub const RESET_ISOLATION_SQL: &str = "SET TRANSACTION ISOLATION LEVEL READ COMMITTED";

/// The table's columns in order, with their primary-key ordinal (0 when not in the key), and
/// whether change tracking is on for it. Returns no row when the table does not exist.
pub fn describe_sql(table: &TableRef) -> Sql {
    Sql {
        text: "SELECT c.name, CAST(ISNULL(ic.key_ordinal, 0) AS int), \
               CAST(CASE WHEN EXISTS (SELECT 1 FROM sys.change_tracking_tables ctt WHERE ctt.object_id = c.object_id) \
               OR CHANGE_TRACKING_MIN_VALID_VERSION(c.object_id) IS NOT NULL THEN 1 ELSE 0 END AS int) \
               FROM sys.columns c \
               LEFT JOIN sys.indexes i ON i.object_id = c.object_id AND i.is_primary_key = 1 \
               LEFT JOIN sys.index_columns ic ON ic.object_id = i.object_id AND ic.index_id = i.index_id AND ic.column_id = c.column_id \
               WHERE c.object_id = OBJECT_ID(@P1) ORDER BY c.column_id"
            .into(),
        params: vec![Param::Text(table.quoted())],
    }
}

/// `ALLOW_SNAPSHOT_ISOLATION` (`snapshot_isolation_state`, 1 = on) and whether change tracking
/// is on for the database (`CHANGE_TRACKING_CURRENT_VERSION()` is not NULL: needs no catalog
/// permission).
pub fn database_settings_sql() -> Sql {
    Sql {
        text: "SELECT CAST(d.snapshot_isolation_state AS int), \
               CAST(CASE WHEN CHANGE_TRACKING_CURRENT_VERSION() IS NULL THEN 0 ELSE 1 END AS int) \
               FROM sys.databases d WHERE d.database_id = DB_ID()"
            .into(),
        params: vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(names: &[&str]) -> Vec<Ident> {
        names.iter().map(|n| Ident::new(n).unwrap()).collect()
    }

    fn orders() -> TableQuery {
        let spec = TrackedTable::new("sales.orders")
            .unwrap()
            .columns(&["qty", "status"])
            .unwrap();
        TableQuery::resolve(&spec, &ids(&["id"]), &ids(&["id", "qty", "status"]), None).unwrap()
    }

    #[test]
    fn golden_changes_query_single_key() {
        let sql = changes_sql(&orders(), 41, None, 500).unwrap();
        assert_eq!(
            sql.text,
            "SELECT TOP (@P1) [ct].[id], CASE WHEN [t].[id] IS NULL THEN 0 ELSE 1 END, \
             [ct].[SYS_CHANGE_VERSION], [ct].[SYS_CHANGE_OPERATION], [t].[qty], [t].[status] \
             FROM CHANGETABLE(CHANGES [sales].[orders], @P2) AS [ct] \
             LEFT JOIN [sales].[orders] AS [t] ON [t].[id] = [ct].[id] ORDER BY [ct].[id]"
        );
        assert_eq!(sql.params, vec![Param::Int(500), Param::Int(41)]);
    }

    #[test]
    fn golden_changes_query_with_every_option() {
        let spec = TrackedTable::new("dbo.t004forecast_latest")
            .unwrap()
            .columns(&["unit_no", "value"])
            .unwrap()
            .filter(
                Filter::eq("provider", "epias")
                    .unwrap()
                    .and(Filter::is_in("unit_type", [1, 2]).unwrap()),
            )
            .lookup(
                Lookup::new(
                    "units",
                    "dbo.power_plant",
                    &["unit_no", "name"],
                    &[("unit_no", "unit_no")],
                )
                .unwrap()
                .filter(Filter::eq("active", true).unwrap()),
            )
            .version_expr(ChangeColumn::CreationVersion)
            .operation_expr(ChangeColumn::lookup("name").unwrap());
        let q = TableQuery::resolve(
            &spec,
            &ids(&["unit_type", "unit_no"]),
            &ids(&["unit_type", "unit_no", "provider", "value"]),
            Some(&ids(&["unit_no", "name", "active"])),
        )
        .unwrap();
        let after = [Param::Int(2), Param::Text("u7".into())];
        let sql = changes_sql(&q, 9, Some(&after), 100).unwrap();
        assert_eq!(
            sql.text,
            "WITH [units] AS (SELECT [unit_no], [name] FROM [dbo].[power_plant] AS [s] WHERE [s].[active] = @P1) \
             SELECT TOP (@P2) [ct].[unit_type], [ct].[unit_no], CASE WHEN [t].[unit_type] IS NULL THEN 0 ELSE 1 END, \
             [ct].[SYS_CHANGE_CREATION_VERSION], [units].[name], [t].[unit_no], [t].[value], [units].[unit_no], [units].[name] \
             FROM CHANGETABLE(CHANGES [dbo].[t004forecast_latest], @P3) AS [ct] \
             LEFT JOIN [dbo].[t004forecast_latest] AS [t] ON [t].[unit_type] = [ct].[unit_type] AND [t].[unit_no] = [ct].[unit_no] \
             AND (([t].[provider] = @P4) AND ([t].[unit_type] IN (@P5, @P6))) \
             LEFT JOIN [units] ON [units].[unit_no] = [t].[unit_no] \
             WHERE (([ct].[unit_type] > @P7) OR ([ct].[unit_type] = @P8 AND [ct].[unit_no] > @P9)) \
             ORDER BY [ct].[unit_type], [ct].[unit_no]"
        );
        assert_eq!(
            sql.params,
            vec![
                Param::Bool(true),
                Param::Int(100),
                Param::Int(9),
                Param::Text("epias".into()),
                Param::Int(1),
                Param::Int(2),
                Param::Int(2),
                Param::Int(2),
                Param::Text("u7".into()),
            ]
        );
        assert_eq!(
            q.column_names(),
            vec!["unit_no", "value", "units.unit_no", "units.name"]
        );
    }

    #[test]
    fn golden_scan_query() {
        let q = orders();
        let sql = scan_sql(&q, None, 1000).unwrap();
        assert_eq!(
            sql.text,
            "SELECT TOP (@P1) [t].[id], [t].[qty], [t].[status] FROM [sales].[orders] AS [t] ORDER BY [t].[id]"
        );
        let mut spec = q.spec.clone();
        spec.filter = Some(
            Filter::cmp("qty", CmpOp::Ge, 10)
                .unwrap()
                .or(Filter::is_null("status").unwrap())
                .not(),
        );
        let q = TableQuery::resolve(&spec, &q.key, &ids(&["id", "qty", "status"]), None).unwrap();
        let sql = scan_sql(&q, Some(&[Param::Int(7)]), 1000).unwrap();
        assert_eq!(
            sql.text,
            "SELECT TOP (@P1) [t].[id], [t].[qty], [t].[status] FROM [sales].[orders] AS [t] \
             WHERE (NOT (([t].[qty] >= @P2) OR ([t].[status] IS NULL))) AND (([t].[id] > @P3)) ORDER BY [t].[id]"
        );
        assert_eq!(
            sql.params,
            vec![Param::Int(1000), Param::Int(10), Param::Int(7)]
        );
    }

    #[test]
    fn golden_catalog_queries_bind_the_table_name() {
        let t = TableRef::parse("sales.orders").unwrap();
        let s = min_valid_version_sql(&t);
        assert_eq!(
            s.text,
            "SELECT CHANGE_TRACKING_MIN_VALID_VERSION(OBJECT_ID(@P1))"
        );
        assert_eq!(s.params, vec![Param::Text("[sales].[orders]".into())]);
        assert_eq!(
            describe_sql(&t).params,
            vec![Param::Text("[sales].[orders]".into())]
        );
        assert_eq!(
            current_version_sql().text,
            "SELECT CHANGE_TRACKING_CURRENT_VERSION()"
        );
    }

    #[test]
    fn hostile_values_stay_parameters() {
        let hostile = "x'; DROP TABLE orders; --";
        let mut spec = orders().spec;
        spec.filter = Some(Filter::eq("status", hostile).unwrap());
        let q = TableQuery::resolve(&spec, &ids(&["id"]), &ids(&["id", "qty", "status"]), None)
            .unwrap();
        for sql in [
            changes_sql(&q, 1, None, 10).unwrap(),
            scan_sql(&q, None, 10).unwrap(),
        ] {
            assert!(!sql.text.contains("DROP"), "{}", sql.text);
            assert!(sql.params.contains(&Param::Text(hostile.into())));
        }
    }

    #[test]
    fn hostile_identifiers_are_refused_everywhere() {
        let evil = "t]; DROP TABLE x--";
        assert!(matches!(TrackedTable::new(evil), Err(CdcError::Config(_))));
        assert!(matches!(
            TrackedTable::new(&format!("dbo.{evil}")),
            Err(CdcError::Config(_))
        ));
        let t = TrackedTable::new("orders").unwrap();
        assert!(matches!(
            t.clone().columns(&["id", evil]),
            Err(CdcError::Config(_))
        ));
        assert!(matches!(Filter::eq(evil, 1), Err(CdcError::Config(_))));
        assert!(matches!(Filter::is_null(evil), Err(CdcError::Config(_))));
        assert!(matches!(Filter::is_in(evil, [1]), Err(CdcError::Config(_))));
        assert!(matches!(
            ChangeColumn::column(evil),
            Err(CdcError::Config(_))
        ));
        assert!(matches!(
            ChangeColumn::lookup(evil),
            Err(CdcError::Config(_))
        ));
        assert!(matches!(
            Lookup::new(evil, "dbo.p", &["a"], &[("a", "a")]),
            Err(CdcError::Config(_))
        ));
        assert!(matches!(
            Lookup::new("l", evil, &["a"], &[("a", "a")]),
            Err(CdcError::Config(_))
        ));
        assert!(matches!(
            Lookup::new("l", "dbo.p", &["a"], &[("a", evil)]),
            Err(CdcError::Config(_))
        ));
    }

    #[test]
    fn options_are_checked_against_the_catalog() {
        let cols = ids(&["id", "qty"]);
        let t = TrackedTable::new("orders").unwrap();
        // No primary key.
        assert!(matches!(
            TableQuery::resolve(&t, &[], &cols, None),
            Err(CdcError::Table { .. })
        ));
        // Unknown selected column, filter column, expression column.
        for spec in [
            t.clone().columns(&["nope"]).unwrap(),
            t.clone().filter(Filter::eq("nope", 1).unwrap()),
            t.clone()
                .version_expr(ChangeColumn::column("nope").unwrap()),
        ] {
            let e = TableQuery::resolve(&spec, &ids(&["id"]), &cols, None).unwrap_err();
            assert!(
                matches!(&e, CdcError::Table { reason, .. } if reason.contains("nope")),
                "{e}"
            );
        }
        // Lookup: reserved names, joins on unexposed columns, unknown source columns, no lookup.
        assert!(Lookup::new("ct", "p", &["a"], &[("a", "id")]).is_err());
        assert!(Lookup::new("T", "p", &["a"], &[("a", "id")]).is_err());
        assert!(Lookup::new("l", "p", &["a"], &[("b", "id")]).is_err());
        assert!(Lookup::new("l", "p", &["a"], &[]).is_err());
        let l = Lookup::new("l", "p", &["a"], &[("a", "id")]).unwrap();
        let spec = t.clone().lookup(l);
        assert!(matches!(
            TableQuery::resolve(&spec, &ids(&["id"]), &cols, Some(&ids(&["b"]))),
            Err(CdcError::Table { .. })
        ));
        assert!(TableQuery::resolve(&spec, &ids(&["id"]), &cols, Some(&ids(&["a"]))).is_ok());
        let spec = t.operation_expr(ChangeColumn::lookup("a").unwrap());
        assert!(matches!(spec.validate(), Err(CdcError::Config(_))));
    }

    #[test]
    fn bounds_are_enforced() {
        assert!(Filter::is_in("a", Vec::<i64>::new()).is_err());
        assert!(Filter::is_in("a", 0..=MAX_IN_VALUES as i64).is_err());
        let mut f = Filter::eq("a", 1).unwrap();
        for _ in 0..=MAX_FILTER_DEPTH {
            f = f.not();
        }
        let t = TrackedTable::new("orders").unwrap().filter(f);
        assert!(matches!(t.validate(), Err(CdcError::Config(_))));
        let t = TrackedTable::new("orders")
            .unwrap()
            .filter(Filter::eq("a", f64::NAN).unwrap());
        assert!(matches!(t.validate(), Err(CdcError::Config(_))));
        // Too many parameters in total.
        let mut f = Filter::is_in("a", 0..MAX_IN_VALUES as i64).unwrap();
        f = f.or(Filter::is_in("a", 0..MAX_IN_VALUES as i64).unwrap());
        let spec = TrackedTable::new("orders").unwrap().filter(f);
        let q = TableQuery::resolve(&spec, &ids(&["a"]), &ids(&["a"]), None).unwrap();
        assert!(matches!(scan_sql(&q, None, 10), Err(CdcError::Config(_))));
        // A cursor of the wrong width.
        assert!(matches!(
            scan_sql(&orders(), Some(&[]), 10),
            Err(CdcError::Config(_))
        ));
    }
}
