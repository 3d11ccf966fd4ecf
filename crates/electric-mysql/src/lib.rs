//! A MariaDB/MySQL binlog change source for Electric: [`MysqlChangeSource`].
//!
//! See the crate README for settings, rights, the value mapping and what was tested.
#![doc = include_str!("../README.md")]
#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod ddl;
mod error;
pub mod position;
mod schema;
mod source;

pub use position::BinlogPos;
pub use source::{HistoryLostPolicy, MysqlChangeSource, MysqlSourceBuilder, MAX_BATCH};
