//! The real backend on SQL Server (work in progress; feature `tiberius`).
