//! SQL Server Change Tracking as an Electric [`ChangeSource`](electric_core::cdc::ChangeSource):
//! the original's `TrackChanges` module (`CHANGETABLE` polling), with the correct resume rule.
//!
//! **Not run against a real SQL Server.** No SQL Server can run where this was built; the
//! resume rule is tested against [`fake::FakeCt`], which scripts commits, retention cleanup,
//! `TRUNCATE`, commits racing the poll and restarts. The real backend (`TiberiusBackend`,
//! feature `tiberius`, off by default) has integration tests that run only when
//! `ELECTRIC_TEST_MSSQL_URL` is set. See the crate README.
//!
//! - [`MssqlChangeSource`]: the resume rule (see [`source`]), over any [`CtBackend`].
//! - [`sql`]: the original's options (selected columns, filter, CTE prefix, version and
//!   operation expressions) as validated identifiers and bound parameters, and the SQL built
//!   from them.
//! - [`fake`]: the in-memory database the tests use.
//!
//! ```
//! use electric_core::cdc::{ChangeSource, Op, SourceEvent};
//! use electric_mssql::{fake::FakeCt, Filter, MssqlChangeSource, TrackedTable};
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let db = FakeCt::new();
//! db.create_table("dbo.orders", &["id", "status", "qty"], &["id"]);
//!
//! let mut source = MssqlChangeSource::builder(db.backend())
//!     .name("orders")
//!     .table(
//!         TrackedTable::new("dbo.orders")?
//!             .columns(&["qty"])?
//!             .filter(Filter::eq("status", "open")?),
//!     )
//!     .build()?;
//! source.start(None).await?;
//! // The initial load of an empty table, then its checkpoint.
//! assert!(matches!(source.next().await?, Some(SourceEvent::SnapshotStart { .. })));
//! assert!(matches!(source.next().await?, Some(SourceEvent::SnapshotEnd { .. })));
//! let Some(SourceEvent::Changes(b)) = source.next().await? else { panic!() };
//! source.ack(b.checkpoint.as_ref().unwrap()).await?;
//!
//! db.commit(|tx| tx.put("dbo.orders", electric_mssql::ct_row![1, "open", 5]));
//! let Some(SourceEvent::Changes(b)) = source.next().await? else { panic!() };
//! assert_eq!(b.items[0].op, Op::Insert);
//! assert!(b.checkpoint.is_some());
//! # Ok::<_, electric_core::cdc::CdcError>(())
//! # }).unwrap();
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod backend;
pub mod fake;
pub mod ident;
pub mod source;
pub mod sql;
#[cfg(feature = "tiberius")]
pub mod tds;

pub use backend::{ChangeRow, CtBackend, DbSettings, ScanRow, TableInfo};
pub use ident::{Ident, TableRef};
pub use source::{
    MssqlChangeSource, MssqlChangeSourceBuilder, MssqlPosition, MssqlStats, PollBackoff,
};
pub use sql::{ChangeColumn, CmpOp, Filter, Lookup, Param, TableQuery, TrackedTable};
#[cfg(feature = "tiberius")]
pub use tds::TiberiusBackend;

#[cfg(test)]
mod tests {
    use electric_core::cdc::ChangeSource;

    use crate::fake::{FakeCt, FakeCtBackend};
    use crate::{MssqlChangeSource, TrackedTable};

    #[test]
    fn sources_are_object_safe_send_and_static() {
        fn boxed<S: ChangeSource + 'static>(s: S) -> Box<dyn ChangeSource> {
            Box::new(s)
        }
        fn send_static<T: Send + 'static>(_: &T) {}
        fn send<T: Send>(_: &T) {}
        let db = FakeCt::new();
        let mut s: MssqlChangeSource<FakeCtBackend> = MssqlChangeSource::builder(db.backend())
            .table(TrackedTable::new("dbo.t").unwrap())
            .build()
            .unwrap();
        send_static(&s);
        send(&s.next());
        let b = boxed(s);
        assert_eq!(b.name(), "mssql:ct");
        #[cfg(feature = "tiberius")]
        {
            let t = MssqlChangeSource::builder(
                crate::TiberiusBackend::from_ado_string("server=tcp:localhost,1433").unwrap(),
            )
            .table(TrackedTable::new("dbo.t").unwrap())
            .build()
            .unwrap();
            let b = boxed(t);
            assert_eq!(b.name(), "mssql:ct");
        }
    }
}
