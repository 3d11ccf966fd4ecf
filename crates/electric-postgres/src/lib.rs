//! PostgreSQL change data capture for Electric: [`PgChangeSource`], a
//! [`ChangeSource`](electric_core::cdc::ChangeSource) on logical replication with the `pgoutput`
//! plugin (protocol v1), and [`pgoutput`], our own decoder for its messages.
//!
//! # Server settings and rights
//! - `wal_level = logical` (needs a restart); otherwise `start` fails with
//!   [`CdcError::Setting`](electric_core::cdc::CdcError::Setting) naming `wal_level`.
//! - Free `max_replication_slots` and `max_wal_senders` (one each per source).
//! - `max_slot_wal_keep_size`: `-1` (unlimited) keeps WAL for a stopped source for ever; a
//!   limit bounds the disk but can invalidate the slot (then the source re-snapshots, below).
//! - The role needs `REPLICATION` (or superuser), else
//!   [`CdcError::Permission`](electric_core::cdc::CdcError::Permission) with right
//!   `REPLICATION`; `SELECT` on the tables; and ownership of them the first time, to create the
//!   publication (right `table ownership (CREATE PUBLICATION)`).
//! - Every table needs a primary key (or a replica identity index), or `REPLICA IDENTITY FULL` —
//!   then, without a primary key, every column is the key. Otherwise `start` fails with
//!   [`CdcError::Table`](electric_core::cdc::CdcError::Table).
//!
//! # What it does
//! - **Publication and slot.** The publication (`FOR TABLE t (cols) WHERE (filter)`, PostgreSQL
//!   15 column lists and row filters, built from validated, quoted identifiers and quoted
//!   literals — [`RowFilter`]) is created when missing; on a fresh start an existing one is set
//!   to the configuration; on a resume its table set must match.
//! - **Snapshot hand-off** (fresh start, or the slot is missing or invalidated): the slot is
//!   (re)created on the replication connection with `CREATE_REPLICATION_SLOT … LOGICAL pgoutput
//!   (SNAPSHOT 'export')`, and the exported snapshot is imported into a `REPEATABLE READ READ
//!   ONLY` transaction on the control connection (`SET TRANSACTION SNAPSHOT`) before the
//!   walsender runs another command. That snapshot is exactly the database as of the slot's
//!   consistent point: every transaction committed before it is in the snapshot, every one
//!   after it is decoded by the slot — no gap and no duplicate, with one slot and no xid
//!   bookkeeping (PostgreSQL's own table sync works the same way). We chose it over the
//!   ElectricSQL `pg_current_snapshot()` xmin/xmax filtering because the source snapshots all
//!   its tables at once, at slot creation; adding a table means a fresh start. The rows are
//!   read through a cursor, `max_batch` at a time, between
//!   [`SourceEvent::SnapshotStart`](electric_core::cdc::SourceEvent::SnapshotStart) (reason
//!   `"initial"`, `"slot missing"` or `"slot invalidated"`) and `SnapshotEnd`, then a batch
//!   with the snapshot's checkpoint; streaming starts at the consistent point.
//! - **Batches** hold at most `max_batch` changes; a bigger transaction arrives as several,
//!   only the last carrying the checkpoint. Memory is bounded by `buffered_batches` batches,
//!   the transport's event buffer and `max_message_bytes` per row.
//! - **Positions** are 16 bytes (commit LSN, ordinal; big-endian) per change and 24 bytes per
//!   checkpoint (commit LSN, `u64::MAX`, the LSN after the commit); byte order is stream order.
//! - **Acknowledgement.** Nothing is confirmed to the server except in
//!   [`ack`](electric_core::cdc::ChangeSource::ack): the sink calls it once the whole
//!   transaction is committed. When nothing is in flight and everything handed out is acked,
//!   the source confirms each keepalive's WAL end, so a slot whose tables are idle (writes only
//!   elsewhere) retains no WAL.
//! - **TOAST**: an unchanged TOASTed column arrives as
//!   [`Value::Unchanged`](electric_core::cdc::Value::Unchanged) (leave the field as it is).
//!   An update changing the key is a delete of the old key plus an insert. `TRUNCATE` is an
//!   empty snapshot of the table (`SnapshotStart` reason `"truncated"`, `SnapshotEnd`).
//! - **Types**: see [`pgoutput::text_value`]; unmapped types arrive as text.
//! - **Schema changes**: an added column appears with the next change (a new Relation
//!   message). A dropped table is detected between transactions (checked every
//!   `table_check_interval`) and ends the stream with `CdcError::Table` "dropped while
//!   streaming". A changed primary key is not picked up until the next `start`.
//! - **Faults**: a lost connection (server restart, network) ends the stream with
//!   [`CdcError::Unavailable`](electric_core::cdc::CdcError::Unavailable) (retryable); the
//!   **caller restarts** with `start(last persisted checkpoint)`, which resumes after it (the
//!   unacknowledged rest comes again: at-least-once). A slot found `wal_status = lost`, or
//!   refused at `START_REPLICATION` as invalidated, is dropped, recreated and re-snapshotted.
//!   A slot invalidated while streaming (the server ends its walsender) ends the stream with
//!   `Unavailable`; the restart then re-snapshots. Unknown server errors are reported as
//!   `Unavailable` with the server's message; a row over `max_message_bytes` is a permanent
//!   `Malformed` error (raise the limit).
//! - **Caveat for sinks:** a crash *during* a re-snapshot leaves the caller's previous
//!   checkpoint, which the recreated slot accepts; the sink must remember that a snapshot was
//!   in progress (between `SnapshotStart` and the snapshot's checkpoint) and restart with
//!   `None` then. An initial snapshot has no such issue (no checkpoint yet).
//!
//! # Tested
//! Against PostgreSQL 15 (`.ci/services`, `ELECTRIC_TEST_PG_URL`): snapshot then stream, the
//! hand-off under concurrent writes, large transactions in several batches, TOAST, types,
//! column lists and row filters, idle confirmation, resume, added columns, dropped tables, no
//! primary key, missing `REPLICATION`, a non-owner creating the publication, a row over the
//! message limit, confirmation held while a transaction is unacknowledged; on private
//! clusters (initdb on ports 7401–7404): `wal_level=replica`, a kill and restart mid-stream,
//! slot invalidation while stopped and while streaming. The decoder is
//! property-tested and fuzzed on bytes captured from the server (`tests/vectors`).

pub mod config;
pub mod pgoutput;
mod source;

pub use config::{CmpOp, Literal, PgSourceConfig, RowFilter, TableConfig};
pub use source::{checkpoint_lsn, decode_captured, CapturedChange, PgChangeSource};
