//! PostgreSQL change data capture for Electric: [`PgChangeSource`], a
//! [`ChangeSource`](electric_core::cdc::ChangeSource) on logical replication with the `pgoutput`
//! plugin (protocol v1), and [`pgoutput`], our own decoder for its messages.
//!
//! # Server settings and rights
//! - PostgreSQL 15 or later (column lists, row filters, the `CREATE_REPLICATION_SLOT` option
//!   list); older servers fail with `CdcError::Setting` naming `server_version_num`.
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
//! - **Fresh start** (`start(None)`): an existing inactive slot of that name is dropped and
//!   recreated (a slot held by a live session is refused with `Unavailable`).
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
//!   only the last carrying the checkpoint. Memory is bounded: at most `buffered_batches`
//!   batches of `max_batch` changes wait for `next`, plus the transport's event buffer
//!   (`max_batch` clamped to 64–8,192 messages), each message at most `max_message_bytes`; the
//!   snapshot reads `max_batch` rows at a time through a cursor. A long snapshot holds its
//!   `REPEATABLE READ` transaction (and so vacuum's horizon) and the slot's WAL until it ends.
//! - **Positions** are 16 bytes (commit LSN, ordinal; big-endian) per change and 24 bytes per
//!   checkpoint (commit LSN, `u64::MAX`, the LSN after the commit); byte order is stream order.
//! - **Acknowledgement.** Nothing is confirmed to the server except in
//!   [`ack`](electric_core::cdc::ChangeSource::ack): the sink calls it once the whole
//!   transaction is committed. When nothing is in flight and everything handed out is acked,
//!   the source confirms each keepalive's WAL end, so a slot whose tables are idle (writes only
//!   elsewhere) retains no WAL.
//! - **TOAST**: an unchanged TOASTed column arrives as
//!   [`Value::Unchanged`](electric_core::cdc::Value::Unchanged) (leave the field as it is).
//!   With `REPLICA IDENTITY FULL` the old row's value fills it in instead. An update changing
//!   the key is a delete of the old key plus an insert; under `REPLICA IDENTITY DEFAULT` the
//!   server does not send unchanged TOASTed values even then, so the inserted row lacks them —
//!   tables whose keys change and that hold large values need `REPLICA IDENTITY FULL`. `TRUNCATE` is an
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
//!   `Malformed` error (raise the limit). A frozen server raises no error by itself: the
//!   periodic table check, unanswered for `liveness_timeout`, ends the stream with
//!   `Unavailable`.
//! - **Slot epoch.** Before (re)creating the slot, the source records the current WAL position
//!   in the publication's comment (`electric slot <slot> epoch <lsn>`). A checkpoint below it
//!   belongs to an earlier slot — a crash during a re-snapshot leaves the previous checkpoint
//!   behind — and is answered with a new snapshot (reason `"slot recreated"`) instead of
//!   resuming on a slot that never held its changes. Without ownership of the publication the
//!   comment cannot be written (a warning) and this detection is off.
//!
//! # Tested
//! Against PostgreSQL 15 (`.ci/services`, `ELECTRIC_TEST_PG_URL`): snapshot then stream, the
//! hand-off under concurrent writes, large transactions in several batches, TOAST, types,
//! column lists and row filters, idle confirmation, resume, added columns, dropped tables, no
//! primary key, missing `REPLICATION`, a non-owner creating the publication, a row over the
//! message limit, confirmation held while a transaction is unacknowledged, a checkpoint from
//! before a slot recreation. On private clusters (initdb, ports 7401–7407): `wal_level=replica`,
//! a kill and restart mid-stream, a frozen server, slot invalidation while stopped and while
//! streaming, SCRAM passwords (and a wrong one). End to end with electric-core's `Connector`:
//! documents equal rows after snapshot, streaming, a connector kill and a database kill. The
//! decoder is property-tested and fuzzed on bytes captured from the server (`tests/vectors`).

pub mod config;
pub mod pgoutput;
mod source;

pub use config::{CmpOp, Literal, PgSourceConfig, RowFilter, TableConfig};
pub use source::{checkpoint_lsn, decode_captured, CapturedChange, PgChangeSource};
