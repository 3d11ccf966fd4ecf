//! Mapping `mysql_async` errors to [`CdcError`] (the client's types never leak).

use electric_core::cdc::CdcError;

/// `ER_DBACCESS_DENIED_ERROR`, `ER_ACCESS_DENIED_ERROR`, `ER_TABLEACCESS_DENIED_ERROR`,
/// `ER_SPECIFIC_ACCESS_DENIED_ERROR`, `ER_COLUMNACCESS_DENIED_ERROR`.
const DENIED: [u16; 5] = [1044, 1045, 1142, 1227, 1143];
/// `ER_MASTER_FATAL_ERROR_READING_BINLOG`.
pub(crate) const FATAL_READING_BINLOG: u16 = 1236;

/// Maps a client error. Server refusals of rights become [`CdcError::Permission`] naming what
/// the server said; everything else that the next attempt may not see again (I/O, a dropped
/// connection, a server shutting down) is [`CdcError::Unavailable`].
pub(crate) fn map_err(e: mysql_async::Error) -> CdcError {
    map_err_right(e, "")
}

/// As [`map_err`], naming `right` when the server refuses one.
pub(crate) fn map_err_right(e: mysql_async::Error, right: &str) -> CdcError {
    match e {
        mysql_async::Error::Server(s) if DENIED.contains(&s.code) => CdcError::Permission {
            right: if right.is_empty() {
                format!("server error {}", s.code)
            } else {
                right.to_string()
            },
            detail: s.message,
        },
        mysql_async::Error::Server(s) if s.code == FATAL_READING_BINLOG => {
            CdcError::HistoryLost(format!("the server cannot send the binlog: {}", s.message))
        }
        mysql_async::Error::Url(u) => CdcError::Config(format!("bad MariaDB URL: {u}")),
        other => CdcError::Unavailable(other.to_string()),
    }
}
