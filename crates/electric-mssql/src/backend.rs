//! [`CtBackend`]: the SQL the source needs, as typed calls.
//!
//! [`MssqlChangeSource`](crate::MssqlChangeSource) holds the resume rule and talks to the
//! database only through this trait, so the rule is tested against [`FakeCt`](crate::fake::FakeCt)
//! and runs unchanged on the real server (`TiberiusBackend`, feature `tiberius`).

use async_trait::async_trait;
use electric_core::cdc::{CdcResult, Value};

use crate::ident::{Ident, TableRef};
use crate::sql::TableQuery;

/// Database-wide settings the source checks at start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DbSettings {
    /// `ALLOW_SNAPSHOT_ISOLATION ON`.
    pub snapshot_isolation: bool,
    /// `ALTER DATABASE … SET CHANGE_TRACKING = ON`.
    pub change_tracking: bool,
}

/// A table as the catalog describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableInfo {
    /// Every column, in table order.
    pub columns: Vec<Ident>,
    /// The primary-key columns, in key order (empty: no primary key).
    pub key: Vec<Ident>,
    /// `ALTER TABLE … ENABLE CHANGE_TRACKING` was run.
    pub change_tracking: bool,
}

/// One row of a changes page.
#[derive(Clone, Debug, PartialEq)]
pub struct ChangeRow {
    /// The key, from `CHANGETABLE`.
    pub key: Vec<Value>,
    /// Whether the current row exists and matches the filter: the truth. `false` ⇒ delete.
    pub present: bool,
    /// The version expression's value.
    pub version: Value,
    /// The operation expression's value (advisory).
    pub operation: Value,
    /// The reported columns then the lookup's columns ([`TableQuery::column_names`]); empty
    /// values (all [`Value::Null`]) when not present.
    pub columns: Vec<Value>,
}

/// One row of a full-scan page.
#[derive(Clone, Debug, PartialEq)]
pub struct ScanRow {
    /// The key.
    pub key: Vec<Value>,
    /// The reported columns then the lookup's columns.
    pub columns: Vec<Value>,
}

/// The SQL Server calls the change source makes. One backend is one connection (one session).
///
/// Versions are `bigint`s on the server; backends refuse negative ones with
/// [`CdcError::Malformed`](electric_core::cdc::CdcError::Malformed).
#[async_trait]
pub trait CtBackend: Send {
    /// `ALLOW_SNAPSHOT_ISOLATION` and database change tracking.
    async fn database_settings(&mut self) -> CdcResult<DbSettings>;

    /// The table's columns, key and change-tracking state; `None` when it does not exist (or is
    /// not visible to the user).
    async fn describe(&mut self, table: &TableRef) -> CdcResult<Option<TableInfo>>;

    /// `SELECT CHANGE_TRACKING_CURRENT_VERSION()`, outside any transaction. `None` when change
    /// tracking is off for the database.
    async fn current_version(&mut self) -> CdcResult<Option<u64>>;

    /// `SET TRANSACTION ISOLATION LEVEL SNAPSHOT; BEGIN TRANSACTION`.
    async fn begin_snapshot(&mut self) -> CdcResult<()>;

    /// `CHANGE_TRACKING_MIN_VALID_VERSION(OBJECT_ID(table))`; `None` when change tracking is off
    /// for the table or the user lacks `VIEW CHANGE TRACKING`.
    async fn min_valid_version(&mut self, table: &TableRef) -> CdcResult<Option<u64>>;

    /// Up to `limit` rows of `CHANGETABLE(CHANGES t, since)` joined to the current rows, in key
    /// order, with keys after `after` ([`changes_sql`](crate::sql::changes_sql)).
    async fn changes_since(
        &mut self,
        query: &TableQuery,
        since: u64,
        after: Option<&[Value]>,
        limit: usize,
    ) -> CdcResult<Vec<ChangeRow>>;

    /// Up to `limit` current rows matching the filter, in key order, with keys after `after`
    /// ([`scan_sql`](crate::sql::scan_sql)).
    async fn full_scan(
        &mut self,
        query: &TableQuery,
        after: Option<&[Value]>,
        limit: usize,
    ) -> CdcResult<Vec<ScanRow>>;

    /// `COMMIT TRANSACTION` (the transaction only read).
    async fn commit(&mut self) -> CdcResult<()>;

    /// Abandons the transaction, if one is open. Called after an error; must not fail when
    /// none is open.
    async fn rollback(&mut self) -> CdcResult<()>;

    /// Called when a previous call was cancelled midway (its future dropped): the connection may
    /// be mid-response, so a real backend reconnects. The default does nothing.
    async fn reset(&mut self) -> CdcResult<()> {
        Ok(())
    }
}

#[async_trait]
impl<B: CtBackend + ?Sized> CtBackend for Box<B> {
    async fn database_settings(&mut self) -> CdcResult<DbSettings> {
        (**self).database_settings().await
    }
    async fn describe(&mut self, table: &TableRef) -> CdcResult<Option<TableInfo>> {
        (**self).describe(table).await
    }
    async fn current_version(&mut self) -> CdcResult<Option<u64>> {
        (**self).current_version().await
    }
    async fn begin_snapshot(&mut self) -> CdcResult<()> {
        (**self).begin_snapshot().await
    }
    async fn min_valid_version(&mut self, table: &TableRef) -> CdcResult<Option<u64>> {
        (**self).min_valid_version(table).await
    }
    async fn changes_since(
        &mut self,
        query: &TableQuery,
        since: u64,
        after: Option<&[Value]>,
        limit: usize,
    ) -> CdcResult<Vec<ChangeRow>> {
        (**self).changes_since(query, since, after, limit).await
    }
    async fn full_scan(
        &mut self,
        query: &TableQuery,
        after: Option<&[Value]>,
        limit: usize,
    ) -> CdcResult<Vec<ScanRow>> {
        (**self).full_scan(query, after, limit).await
    }
    async fn commit(&mut self) -> CdcResult<()> {
        (**self).commit().await
    }
    async fn rollback(&mut self) -> CdcResult<()> {
        (**self).rollback().await
    }
    async fn reset(&mut self) -> CdcResult<()> {
        (**self).reset().await
    }
}
