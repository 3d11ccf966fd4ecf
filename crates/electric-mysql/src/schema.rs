//! Table schemas (from `information_schema`) and the mapping of MariaDB values to [`Value`].

use std::sync::Arc;

use electric_core::cdc::{CdcError, CdcResult, TableName, Value};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Value as MyValue};

use crate::error::map_err;

/// One column as `information_schema.COLUMNS` describes it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ColumnInfo {
    pub name: Arc<str>,
    /// `DATA_TYPE`, lower case (`int`, `varchar`, `datetime`, …); empty when unknown.
    pub data_type: String,
    /// `CHARACTER_SET_NAME`, lower case; `None` for binary and non-string types.
    pub charset: Option<String>,
    /// Declared `JSON` (MariaDB: `CHECK (json_valid(col))`; MySQL: `DATA_TYPE = 'json'`).
    pub json: bool,
    /// The members of an `ENUM` or `SET`, in declaration order.
    pub members: Vec<String>,
    /// An `UNSIGNED` number.
    pub unsigned: bool,
}

impl ColumnInfo {
    /// A column the binlog names but `information_schema` does not know (yet): mapped by the
    /// value's own kind.
    pub fn unknown(name: Arc<str>) -> Self {
        Self {
            name,
            data_type: String::new(),
            charset: None,
            json: false,
            members: Vec::new(),
            unsigned: false,
        }
    }
}

/// A configured table's columns and primary key.
#[derive(Clone, Debug)]
pub(crate) struct TableSchema {
    pub table: TableName,
    pub columns: Vec<ColumnInfo>,
    /// Primary-key columns, in key order.
    pub key: Vec<Arc<str>>,
}

impl TableSchema {
    pub fn column(&self, name: &str) -> Option<&ColumnInfo> {
        self.columns.iter().find(|c| &*c.name == name)
    }
}

fn text(v: Option<MyValue>) -> Option<String> {
    match v {
        Some(MyValue::Bytes(b)) => Some(String::from_utf8_lossy(&b).into_owned()),
        Some(MyValue::Int(i)) => Some(i.to_string()),
        Some(MyValue::UInt(u)) => Some(u.to_string()),
        _ => None,
    }
}

/// Loads `table`'s schema.
///
/// # Errors
/// [`CdcError::Table`] when the table does not exist or has no primary key.
pub(crate) async fn load_schema(conn: &mut Conn, table: &TableName) -> CdcResult<TableSchema> {
    let rows: Vec<mysql_async::Row> = conn
        .exec(
            "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, CHARACTER_SET_NAME \
             FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? \
             ORDER BY ORDINAL_POSITION",
            (&*table.schema, &*table.name),
        )
        .await
        .map_err(map_err)?;
    if rows.is_empty() {
        return Err(CdcError::Table {
            table: table.clone(),
            reason: "not found (or no SELECT right on it)".into(),
        });
    }
    let mut columns = Vec::with_capacity(rows.len());
    for row in rows {
        let mut vals = row.unwrap().into_iter();
        let name = text(vals.next()).unwrap_or_default();
        let data_type = text(vals.next()).unwrap_or_default().to_ascii_lowercase();
        let column_type = text(vals.next()).unwrap_or_default();
        let charset = text(vals.next()).map(|c| c.to_ascii_lowercase());
        let members = if data_type == "enum" || data_type == "set" {
            parse_members(&column_type)
        } else {
            Vec::new()
        };
        columns.push(ColumnInfo {
            unsigned: column_type.to_ascii_lowercase().contains("unsigned"),
            json: data_type == "json",
            name: name.into(),
            data_type,
            charset,
            members,
        });
    }
    // MariaDB's JSON is LONGTEXT with CHECK (json_valid(`col`)). MySQL's CHECK_CONSTRAINTS has
    // no TABLE_NAME column; there JSON is its own DATA_TYPE, so a failed query is fine.
    if let Ok(checks) = conn
        .exec::<mysql_async::Row, _, _>(
            "SELECT CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS \
             WHERE CONSTRAINT_SCHEMA = ? AND TABLE_NAME = ?",
            (&*table.schema, &*table.name),
        )
        .await
    {
        for row in checks {
            let clause: String = text(row.unwrap().into_iter().next())
                .unwrap_or_default()
                .chars()
                .filter(|c| !c.is_whitespace())
                .collect::<String>()
                .to_ascii_lowercase();
            for col in &mut columns {
                let quoted = format!("json_valid(`{}`)", col.name.replace('`', "``"));
                if clause == quoted.to_ascii_lowercase() {
                    col.json = true;
                }
            }
        }
    }
    let key_rows: Vec<mysql_async::Row> = conn
        .exec(
            "SELECT COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE \
             WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND CONSTRAINT_NAME = 'PRIMARY' \
             ORDER BY ORDINAL_POSITION",
            (&*table.schema, &*table.name),
        )
        .await
        .map_err(map_err)?;
    let key: Vec<Arc<str>> = key_rows
        .into_iter()
        .filter_map(|r| text(r.unwrap().into_iter().next()))
        .map(Into::into)
        .collect();
    if key.is_empty() {
        return Err(CdcError::Table {
            table: table.clone(),
            reason: "has no primary key; change capture needs one to identify rows".into(),
        });
    }
    Ok(TableSchema {
        table: table.clone(),
        columns,
        key,
    })
}

/// `enum('a','b''c')` → `["a", "b'c"]`.
pub(crate) fn parse_members(column_type: &str) -> Vec<String> {
    let Some(open) = column_type.find('(') else {
        return Vec::new();
    };
    let body = &column_type[open + 1..];
    let mut out = Vec::new();
    let mut chars = body.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\'' {
            continue;
        }
        let mut s = String::new();
        while let Some(c) = chars.next() {
            if c == '\'' {
                if chars.peek() == Some(&'\'') {
                    chars.next();
                    s.push('\'');
                } else {
                    break;
                }
            } else if c == '\\' {
                if let Some(n) = chars.next() {
                    s.push(n);
                }
            } else {
                s.push(c);
            }
        }
        out.push(s);
    }
    out
}

/// Where a value came from: the two differ for a few types (see [`map_value`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Origin {
    /// A `SELECT` over the binary protocol on a `utf8mb4`, UTC session.
    Snapshot,
    /// A binlog row image (raw column bytes, in the column's charset).
    Binlog,
}

fn fraction(us: u32) -> String {
    if us == 0 {
        String::new()
    } else {
        format!(".{us:06}")
    }
}

/// Days since 1970-01-01 → (year, month, day) (Howard Hinnant's civil_from_days).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn epoch_to_iso(secs: i64, us: u32) -> String {
    if secs == 0 && us == 0 {
        // MariaDB's zero TIMESTAMP, as the snapshot reads it.
        return "0000-00-00T00:00:00Z".into();
    }
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let t = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}{}Z",
        t / 3600,
        (t % 3600) / 60,
        t % 60,
        fraction(us)
    )
}

/// Windows-1252 (MariaDB's `latin1`) to a `String`.
fn cp1252(bytes: &[u8]) -> String {
    const HIGH: [char; 32] = [
        '€', '\u{81}', '‚', 'ƒ', '„', '…', '†', '‡', 'ˆ', '‰', 'Š', '‹', 'Œ', '\u{8d}', 'Ž',
        '\u{8f}', '\u{90}', '‘', '’', '“', '”', '•', '–', '—', '˜', '™', 'š', '›', 'œ', '\u{9d}',
        'ž', 'Ÿ',
    ];
    bytes
        .iter()
        .map(|&b| match b {
            0x80..=0x9f => HIGH[usize::from(b - 0x80)],
            _ => char::from(b),
        })
        .collect()
}

fn decode_text(col: &ColumnInfo, bytes: Vec<u8>, origin: Origin) -> Value {
    let latin1 = origin == Origin::Binlog && col.charset.as_deref() == Some("latin1");
    if latin1 {
        return Value::Text(cp1252(&bytes));
    }
    match String::from_utf8(bytes) {
        Ok(s) => Value::Text(s),
        Err(e) => Value::Bytes(e.into_bytes()),
    }
}

fn int_or_text(u: u64) -> Value {
    i64::try_from(u).map_or_else(|_| Value::Text(u.to_string()), Value::Int)
}

fn float(f: f64) -> Value {
    if f.is_finite() {
        Value::Float(f)
    } else {
        Value::Text(f.to_string())
    }
}

fn json_or_text(col: &ColumnInfo, bytes: Vec<u8>, origin: Origin) -> Value {
    match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(j) => Value::Json(j),
        Err(_) => decode_text(col, bytes, origin),
    }
}

/// Maps one MariaDB value. The mapping (also in the crate docs):
///
/// | column type | [`Value`] |
/// |---|---|
/// | `TINYINT`…`BIGINT` (signed or unsigned), `YEAR`, `BIT(n)` | `Int` (an unsigned `BIGINT` above `i64::MAX`: `Text`) |
/// | `FLOAT`, `DOUBLE` | `Float` (`FLOAT` through its shortest decimal form, so 1.1 stays 1.1) |
/// | `DECIMAL` | `Text`, exact (`"12.50"`) |
/// | `CHAR`, `VARCHAR`, `TEXT`s, `ENUM`, `SET` | `Text` (`SET`: members joined by `,`) |
/// | `BINARY`, `VARBINARY`, `BLOB`s, `GEOMETRY`, other charset `binary` columns | `Bytes` |
/// | `JSON` (MariaDB: a `LONGTEXT` with `CHECK (json_valid(col))`) | `Json`; invalid JSON: `Text` |
/// | `DATE` | `Text` `YYYY-MM-DD` |
/// | `DATETIME` | `Text` `YYYY-MM-DDTHH:MM:SS[.ffffff]` (no zone) |
/// | `TIMESTAMP` | `Text` `YYYY-MM-DDTHH:MM:SS[.ffffff]Z` (UTC) |
/// | `TIME` | `Text` `[-]HH:MM:SS[.ffffff]` (hours may exceed 24) |
///
/// Fractions are printed as six digits when non-zero and omitted when zero, whatever the
/// column's precision. Zero dates print as zeros (`0000-00-00`). Text from the binlog is
/// decoded from `utf8mb3`/`utf8mb4`/`ascii`/`latin1`; bytes in other charsets that are not
/// valid UTF-8 arrive as `Bytes`.
pub(crate) fn map_value(col: &ColumnInfo, v: MyValue, origin: Origin) -> Value {
    let dt = col.data_type.as_str();
    match v {
        MyValue::NULL => Value::Null,
        MyValue::Int(i) => match dt {
            // Binlog ENUM: the 1-based member index (0 = the empty "invalid" value).
            "enum" => Value::Text(
                usize::try_from(i)
                    .ok()
                    .and_then(|i| i.checked_sub(1))
                    .and_then(|i| col.members.get(i).cloned())
                    .unwrap_or_default(),
            ),
            // mysql_common 0.37 reads a binlog MEDIUMINT without sign extension.
            "mediumint" if origin == Origin::Binlog && !col.unsigned && i >= 0x80_0000 => {
                Value::Int(i - 0x100_0000)
            }
            // The pre-5.6 TIMESTAMP in the binlog: epoch seconds.
            "timestamp" => Value::Text(epoch_to_iso(i, 0)),
            _ => Value::Int(i),
        },
        MyValue::UInt(u) => int_or_text(u),
        MyValue::Float(f) => float(f.to_string().parse::<f64>().unwrap_or(f64::from(f))),
        MyValue::Double(d) => float(d),
        MyValue::Date(y, m, d, h, mi, s, us) => Value::Text(match dt {
            "date" => format!("{y:04}-{m:02}-{d:02}"),
            "timestamp" => format!(
                "{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}{}Z",
                fraction(us)
            ),
            _ => format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}{}", fraction(us)),
        }),
        MyValue::Time(neg, days, h, m, s, us) => {
            let hours = u64::from(days) * 24 + u64::from(h);
            Value::Text(format!(
                "{}{hours:02}:{m:02}:{s:02}{}",
                if neg { "-" } else { "" },
                fraction(us)
            ))
        }
        MyValue::Bytes(b) => match dt {
            "decimal" | "enum" => decode_text(col, b, Origin::Snapshot),
            "timestamp" => {
                // Binlog TIMESTAMP2: "<epoch seconds>[.<micros>]".
                let s = String::from_utf8_lossy(&b);
                let (secs, us) = s.split_once('.').unwrap_or((&s, "0"));
                match (secs.parse::<i64>(), us.parse::<u32>()) {
                    (Ok(secs), Ok(us)) => Value::Text(epoch_to_iso(secs, us)),
                    _ => Value::Text(s.into_owned()),
                }
            }
            "year" => {
                // The binlog sends 1900 + the stored byte; the stored 0 is the year 0000.
                let s = String::from_utf8_lossy(&b);
                match s.parse::<i64>() {
                    Ok(1900) => Value::Int(0),
                    Ok(y) => Value::Int(y),
                    Err(_) => Value::Text(s.into_owned()),
                }
            }
            "bit" => {
                if b.len() <= 8 {
                    int_or_text(b.iter().fold(0u64, |acc, &x| (acc << 8) | u64::from(x)))
                } else {
                    Value::Bytes(b)
                }
            }
            "set" if origin == Origin::Binlog => {
                // A little-endian bit mask over the members.
                let names: Vec<&str> = col
                    .members
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| b.get(i / 8).is_some_and(|byte| byte & (1 << (i % 8)) != 0))
                    .map(|(_, m)| m.as_str())
                    .collect();
                Value::Text(names.join(","))
            }
            _ if col.json => json_or_text(col, b, origin),
            _ if col.charset.as_deref().is_some_and(|c| c != "binary") => {
                decode_text(col, b, origin)
            }
            // Unknown to information_schema (a column added after the last schema load):
            // text when it is UTF-8.
            "" => decode_text(col, b, origin),
            _ => Value::Bytes(b),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(dt: &str, charset: Option<&str>) -> ColumnInfo {
        ColumnInfo {
            name: "c".into(),
            data_type: dt.into(),
            charset: charset.map(Into::into),
            json: false,
            members: vec!["a".into(), "b'c".into(), "d".into()],
            unsigned: false,
        }
    }

    #[test]
    fn members_parse_with_quotes() {
        assert_eq!(
            parse_members("enum('a','b''c','d')"),
            vec!["a".to_string(), "b'c".into(), "d".into()]
        );
        assert_eq!(parse_members("set('x')"), vec!["x".to_string()]);
        assert!(parse_members("int(11)").is_empty());
    }

    #[test]
    fn binlog_specific_encodings_map_like_the_snapshot() {
        let b = Origin::Binlog;
        assert_eq!(
            map_value(&col("enum", Some("utf8mb4")), MyValue::Int(2), b),
            Value::Text("b'c".into())
        );
        assert_eq!(
            map_value(&col("set", Some("utf8mb4")), MyValue::Bytes(vec![0b101]), b),
            Value::Text("a,d".into())
        );
        assert_eq!(
            map_value(
                &col("timestamp", None),
                MyValue::Bytes(b"86400.5".to_vec()),
                b
            ),
            Value::Text("1970-01-02T00:00:00.000005Z".into())
        );
        assert_eq!(
            map_value(
                &col("timestamp", None),
                MyValue::Bytes(b"1700000000".to_vec()),
                b
            ),
            Value::Text("2023-11-14T22:13:20Z".into())
        );
        assert_eq!(
            map_value(
                &col("timestamp", None),
                MyValue::Date(2023, 11, 14, 22, 13, 20, 0),
                Origin::Snapshot
            ),
            Value::Text("2023-11-14T22:13:20Z".into())
        );
        assert_eq!(
            map_value(&col("year", None), MyValue::Bytes(b"2024".to_vec()), b),
            Value::Int(2024)
        );
        assert_eq!(
            map_value(&col("mediumint", None), MyValue::Int(0x80_0000), b),
            Value::Int(-8_388_608)
        );
        assert_eq!(
            map_value(&col("mediumint", None), MyValue::Int(5), b),
            Value::Int(5)
        );
        assert_eq!(
            map_value(&col("bit", None), MyValue::Bytes(vec![1, 2]), b),
            Value::Int(258)
        );
        assert_eq!(
            map_value(
                &col("varchar", Some("latin1")),
                MyValue::Bytes(vec![0x80, 0xe9]),
                b
            ),
            Value::Text("€é".into())
        );
        assert_eq!(
            map_value(&col("varbinary", None), MyValue::Bytes(vec![0xff]), b),
            Value::Bytes(vec![0xff])
        );
        assert_eq!(
            map_value(&col("bigint", None), MyValue::UInt(u64::MAX), b),
            Value::Text(u64::MAX.to_string())
        );
        assert_eq!(
            map_value(&col("float", None), MyValue::Float(1.1), b),
            Value::Float(1.1)
        );
        assert_eq!(
            map_value(&col("time", None), MyValue::Time(true, 1, 2, 3, 4, 0), b),
            Value::Text("-26:03:04".into())
        );
        let mut j = col("longtext", Some("utf8mb4"));
        j.json = true;
        assert_eq!(
            map_value(&j, MyValue::Bytes(br#"{"a":1}"#.to_vec()), b),
            Value::Json(serde_json::json!({"a": 1}))
        );
        assert_eq!(
            map_value(&j, MyValue::Bytes(b"{bad".to_vec()), b),
            Value::Text("{bad".into())
        );
    }

    #[test]
    fn civil_dates_are_right() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }
}
