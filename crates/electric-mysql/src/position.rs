//! Binlog positions as ordered bytes.
//!
//! Layout (21 bytes, big-endian so byte order is binlog order):
//!
//! | bytes | field |
//! |---|---|
//! | 0 | format tag, always [`TAG`] |
//! | 1..5 | binlog file sequence number (`binlog.000042` → 42) |
//! | 5..13 | byte offset in that file |
//! | 13..21 | sub-position |
//!
//! * A streamed row change: the offset is the **end** of its rows event (the event header's
//!   `log_pos`), the sub-position its ordinal in the event (×2, +1 for the insert half of a
//!   primary-key-changing update).
//! * A transaction checkpoint: the end of its `XID`/`COMMIT` event, sub-position 0 — greater
//!   than every change of the transaction and smaller than every change after it.
//! * A snapshot row: the snapshot's binlog offset, sub-position its ordinal in the snapshot;
//!   the snapshot's checkpoint has sub-position `u64::MAX`. Every streamed change after the
//!   snapshot ends later in the file, so it sorts after the snapshot.
//!
//! Resuming from any position streams from `file` at `offset`.

use electric_core::cdc::{CdcError, CdcResult, Position};

/// The first byte of every position this crate writes.
pub const TAG: u8 = 0x4d;
const LEN: usize = 21;

/// A decoded binlog position.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BinlogPos {
    /// File sequence number (the numeric extension of the binlog file name).
    pub file_seq: u32,
    /// Byte offset in the file.
    pub offset: u64,
    /// Sub-position (see the module docs).
    pub sub: u64,
}

impl BinlogPos {
    /// The position's bytes.
    pub fn encode(&self) -> Position {
        let mut b = Vec::with_capacity(LEN);
        b.push(TAG);
        b.extend_from_slice(&self.file_seq.to_be_bytes());
        b.extend_from_slice(&self.offset.to_be_bytes());
        b.extend_from_slice(&self.sub.to_be_bytes());
        Position::from_bytes(b)
    }

    /// Parses bytes [`BinlogPos::encode`] wrote.
    ///
    /// # Errors
    /// [`CdcError::BadPosition`] for any other bytes.
    pub fn decode(position: &Position) -> CdcResult<Self> {
        let b = position.as_bytes();
        if b.len() != LEN || b[0] != TAG {
            return Err(CdcError::BadPosition {
                reason: format!(
                    "{} is not a MariaDB binlog position ({LEN} bytes starting {TAG:#04x})",
                    position.to_hex()
                ),
            });
        }
        let mut f = [0u8; 4];
        f.copy_from_slice(&b[1..5]);
        let mut o = [0u8; 8];
        o.copy_from_slice(&b[5..13]);
        let mut s = [0u8; 8];
        s.copy_from_slice(&b[13..21]);
        Ok(Self {
            file_seq: u32::from_be_bytes(f),
            offset: u64::from_be_bytes(o),
            sub: u64::from_be_bytes(s),
        })
    }
}

/// Splits `binlog.000042` into (`binlog`, 42).
pub(crate) fn split_file_name(name: &str) -> CdcResult<(String, u32)> {
    let (base, ext) = name.rsplit_once('.').ok_or_else(|| CdcError::Malformed {
        what: "binlog file name",
        reason: format!("{name:?} has no numeric extension"),
    })?;
    let seq = ext.parse::<u32>().map_err(|_| CdcError::Malformed {
        what: "binlog file name",
        reason: format!("{name:?} has no numeric extension"),
    })?;
    Ok((base.to_string(), seq))
}

/// `binlog` + 42 → `binlog.000042` (the server's `%06u` form).
pub(crate) fn file_name(base: &str, seq: u32) -> String {
    format!("{base}.{seq:06}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_and_order_like_the_binlog() {
        let a = BinlogPos {
            file_seq: 1,
            offset: 900,
            sub: 3,
        };
        let b = BinlogPos {
            file_seq: 1,
            offset: 1000,
            sub: 0,
        };
        let c = BinlogPos {
            file_seq: 2,
            offset: 4,
            sub: 0,
        };
        assert_eq!(BinlogPos::decode(&a.encode()).unwrap(), a);
        assert!(a.encode() < b.encode());
        assert!(b.encode() < c.encode());
        let snap_row = BinlogPos {
            file_seq: 1,
            offset: 1000,
            sub: 7,
        };
        let snap_ckpt = BinlogPos {
            file_seq: 1,
            offset: 1000,
            sub: u64::MAX,
        };
        assert!(snap_row.encode() < snap_ckpt.encode());
    }

    #[test]
    fn foreign_bytes_are_refused() {
        for bad in [vec![], vec![TAG; 20], vec![0u8; 21]] {
            assert!(matches!(
                BinlogPos::decode(&Position::from_bytes(bad)),
                Err(CdcError::BadPosition { .. })
            ));
        }
    }

    #[test]
    fn file_names_split_and_join() {
        assert_eq!(
            split_file_name("binlog.000042").unwrap(),
            ("binlog".into(), 42)
        );
        assert_eq!(
            split_file_name("my.host-bin.1000000").unwrap(),
            ("my.host-bin".into(), 1_000_000)
        );
        assert_eq!(file_name("binlog", 42), "binlog.000042");
        assert_eq!(file_name("b", 1_000_000), "b.1000000");
        assert!(split_file_name("binlog").is_err());
        assert!(split_file_name("binlog.x1").is_err());
    }
}
