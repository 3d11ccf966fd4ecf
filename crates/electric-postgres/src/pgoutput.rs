//! A decoder for PostgreSQL's `pgoutput` logical replication messages, protocol version 1.
//!
//! [`decode`] is a pure function of bytes: it never panics, and anything it cannot read is a
//! [`CdcError::Malformed`]. It covers every v1 message: `B` Begin, `C` Commit, `M` logical
//! message, `R` Relation, `Y` Type, `O` Origin, `I` Insert, `U` Update (optional `K` key or `O`
//! old tuple, then `N`), `D` Delete (`K` or `O`), `T` Truncate. [`encode`] writes the same
//! format (used by the property tests and by nothing else).
//!
//! A tuple's columns are `n` (null), `u` (unchanged TOAST value: the UPDATE did not touch it and
//! the server did not send it), `t` (text form) or `b` (binary form, only with the `binary`
//! option, which this crate never asks for). [`RelationCache`] keeps the last `R` message per
//! relation OID and types text values through the column type OIDs ([`text_value`]).

use std::collections::HashMap;
use std::sync::Arc;

use electric_core::cdc::{CdcError, CdcResult, Value};

/// PostgreSQL type OIDs this crate maps to typed [`Value`]s.
pub mod oid {
    /// `bool`
    pub const BOOL: u32 = 16;
    /// `bytea`
    pub const BYTEA: u32 = 17;
    /// `name`
    pub const NAME: u32 = 19;
    /// `int8`
    pub const INT8: u32 = 20;
    /// `int2`
    pub const INT2: u32 = 21;
    /// `int4`
    pub const INT4: u32 = 23;
    /// `text`
    pub const TEXT: u32 = 25;
    /// `json`
    pub const JSON: u32 = 114;
    /// `float4`
    pub const FLOAT4: u32 = 700;
    /// `float8`
    pub const FLOAT8: u32 = 701;
    /// `bpchar` (`char(n)`)
    pub const BPCHAR: u32 = 1042;
    /// `varchar`
    pub const VARCHAR: u32 = 1043;
    /// `jsonb`
    pub const JSONB: u32 = 3802;
}

/// One column of a tuple as sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TupleValue {
    /// `n`: SQL NULL.
    Null,
    /// `u`: an unchanged TOAST value that the server did not send.
    Unchanged,
    /// `t`: the value's text form (UTF-8 bytes as sent).
    Text(Vec<u8>),
    /// `b`: the value's binary form.
    Binary(Vec<u8>),
}

/// A tuple: one [`TupleValue`] per column of the relation.
pub type Tuple = Vec<TupleValue>;

/// A column of a Relation message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelColumn {
    /// Part of the replica identity (the key) when `true`.
    pub key: bool,
    /// Column name.
    pub name: String,
    /// The column type's OID.
    pub type_oid: u32,
    /// The type modifier (`atttypmod`).
    pub type_mod: i32,
}

/// A Relation message: the shape of a table, sent before its first change in a session and
/// again after it changed (a column added or dropped).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relation {
    /// The relation's OID.
    pub oid: u32,
    /// Schema.
    pub namespace: String,
    /// Table name.
    pub name: String,
    /// `d` default (primary key), `n` nothing, `f` full, `i` index.
    pub replica_identity: u8,
    /// Columns in table order (dropped and generated columns are not sent).
    pub columns: Vec<RelColumn>,
}

/// One decoded pgoutput message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// `B`: a transaction begins.
    Begin {
        /// The LSN of the commit record.
        final_lsn: u64,
        /// Commit time (microseconds since 2000-01-01).
        commit_time: i64,
        /// Transaction id.
        xid: u32,
    },
    /// `C`: it commits.
    Commit {
        /// Flags (unused, 0).
        flags: u8,
        /// The LSN of the commit record.
        commit_lsn: u64,
        /// The LSN just after it: where a resumed stream continues.
        end_lsn: u64,
        /// Commit time.
        commit_time: i64,
    },
    /// `M`: `pg_logical_emit_message`.
    Message {
        /// Emitted inside a transaction.
        transactional: bool,
        /// The message's LSN.
        lsn: u64,
        /// The prefix.
        prefix: String,
        /// The content.
        content: Vec<u8>,
    },
    /// `O`: the origin of the transaction's changes.
    Origin {
        /// The origin's commit LSN.
        lsn: u64,
        /// The origin's name.
        name: String,
    },
    /// `R`: a relation's shape.
    Relation(Relation),
    /// `Y`: a type's name.
    Type {
        /// The type's OID.
        oid: u32,
        /// Its schema.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// `I`: a row inserted.
    Insert {
        /// The relation's OID.
        rel: u32,
        /// The new row.
        new: Tuple,
    },
    /// `U`: a row updated.
    Update {
        /// The relation's OID.
        rel: u32,
        /// `K`: the old key, sent when the key changed (replica identity default or index).
        key: Option<Tuple>,
        /// `O`: the whole old row (replica identity full).
        old: Option<Tuple>,
        /// The new row (`u` for unchanged TOAST values).
        new: Tuple,
    },
    /// `D`: a row deleted.
    Delete {
        /// The relation's OID.
        rel: u32,
        /// `K`: the key (other columns null).
        key: Option<Tuple>,
        /// `O`: the whole old row (replica identity full).
        old: Option<Tuple>,
    },
    /// `T`: tables truncated.
    Truncate {
        /// Bit 1: `CASCADE`, bit 2: `RESTART IDENTITY`.
        options: u8,
        /// The relations' OIDs.
        rels: Vec<u32>,
    },
}

fn malformed(reason: impl Into<String>) -> CdcError {
    CdcError::Malformed {
        what: "pgoutput message",
        reason: reason.into(),
    }
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> CdcResult<&'a [u8]> {
        if self.buf.len() < n {
            return Err(malformed(format!(
                "truncated {what}: need {n} bytes, {} left",
                self.buf.len()
            )));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    fn u8(&mut self, what: &str) -> CdcResult<u8> {
        Ok(self.take(1, what)?[0])
    }
    fn i16(&mut self, what: &str) -> CdcResult<i16> {
        let b = self.take(2, what)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, what: &str) -> CdcResult<u32> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn i32(&mut self, what: &str) -> CdcResult<i32> {
        Ok(self.u32(what)? as i32)
    }
    fn u64(&mut self, what: &str) -> CdcResult<u64> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    fn cstr(&mut self, what: &str) -> CdcResult<String> {
        let end = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| malformed(format!("{what}: missing NUL terminator")))?;
        let s = std::str::from_utf8(&self.buf[..end])
            .map_err(|e| malformed(format!("{what}: not UTF-8: {e}")))?
            .to_owned();
        self.buf = &self.buf[end + 1..];
        Ok(s)
    }
    fn tuple(&mut self) -> CdcResult<Tuple> {
        let n = self.i16("tuple column count")?;
        if n < 0 {
            return Err(malformed(format!("negative column count {n}")));
        }
        // Each column takes at least one byte: refuse counts the buffer cannot hold before
        // allocating for them.
        if n as usize > self.buf.len() {
            return Err(malformed(format!(
                "tuple claims {n} columns, {} bytes left",
                self.buf.len()
            )));
        }
        let mut cols = Vec::with_capacity(n as usize);
        for _ in 0..n {
            cols.push(match self.u8("column kind")? {
                b'n' => TupleValue::Null,
                b'u' => TupleValue::Unchanged,
                kind @ (b't' | b'b') => {
                    let len = self.i32("column length")?;
                    if len < 0 {
                        return Err(malformed(format!("negative column length {len}")));
                    }
                    let data = self.take(len as usize, "column data")?.to_vec();
                    if kind == b't' {
                        TupleValue::Text(data)
                    } else {
                        TupleValue::Binary(data)
                    }
                }
                other => return Err(malformed(format!("unknown column kind 0x{other:02x}"))),
            });
        }
        Ok(cols)
    }
    fn tuple_tagged(&mut self, expected: u8) -> CdcResult<Tuple> {
        let tag = self.u8("tuple tag")?;
        if tag != expected {
            return Err(malformed(format!(
                "expected tuple tag {:?}, got 0x{tag:02x}",
                expected as char
            )));
        }
        self.tuple()
    }
    fn done(&self) -> CdcResult<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(malformed(format!("{} trailing bytes", self.buf.len())))
        }
    }
}

/// Decodes one pgoutput (protocol v1) message.
///
/// # Errors
/// [`CdcError::Malformed`] for an unknown tag, a truncated or over-long message, invalid UTF-8
/// in a name, or an unknown tuple column kind.
pub fn decode(bytes: &[u8]) -> CdcResult<Message> {
    let mut r = Reader { buf: bytes };
    let tag = r.u8("message tag")?;
    let msg = match tag {
        b'B' => Message::Begin {
            final_lsn: r.u64("final LSN")?,
            commit_time: r.u64("commit time")? as i64,
            xid: r.u32("xid")?,
        },
        b'C' => Message::Commit {
            flags: r.u8("flags")?,
            commit_lsn: r.u64("commit LSN")?,
            end_lsn: r.u64("end LSN")?,
            commit_time: r.u64("commit time")? as i64,
        },
        b'M' => {
            let transactional = r.u8("flags")? & 1 == 1;
            let lsn = r.u64("LSN")?;
            let prefix = r.cstr("prefix")?;
            let len = r.i32("content length")?;
            if len < 0 {
                return Err(malformed(format!("negative content length {len}")));
            }
            let content = r.take(len as usize, "content")?.to_vec();
            Message::Message {
                transactional,
                lsn,
                prefix,
                content,
            }
        }
        b'O' => Message::Origin {
            lsn: r.u64("origin LSN")?,
            name: r.cstr("origin name")?,
        },
        b'R' => {
            let oid = r.u32("relation OID")?;
            let namespace = r.cstr("namespace")?;
            let name = r.cstr("relation name")?;
            let replica_identity = r.u8("replica identity")?;
            if !matches!(replica_identity, b'd' | b'n' | b'f' | b'i') {
                return Err(malformed(format!(
                    "unknown replica identity 0x{replica_identity:02x}"
                )));
            }
            let n = r.i16("column count")?;
            if n < 0 || n as usize > r.buf.len() {
                return Err(malformed(format!("bad relation column count {n}")));
            }
            let mut columns = Vec::with_capacity(n as usize);
            for _ in 0..n {
                let flags = r.u8("column flags")?;
                columns.push(RelColumn {
                    key: flags & 1 == 1,
                    name: r.cstr("column name")?,
                    type_oid: r.u32("type OID")?,
                    type_mod: r.i32("type modifier")?,
                });
            }
            Message::Relation(Relation {
                oid,
                namespace,
                name,
                replica_identity,
                columns,
            })
        }
        b'Y' => Message::Type {
            oid: r.u32("type OID")?,
            namespace: r.cstr("type namespace")?,
            name: r.cstr("type name")?,
        },
        b'I' => {
            let rel = r.u32("relation OID")?;
            Message::Insert {
                rel,
                new: r.tuple_tagged(b'N')?,
            }
        }
        b'U' => {
            let rel = r.u32("relation OID")?;
            let (mut key, mut old) = (None, None);
            let new = match r.u8("tuple tag")? {
                b'K' => {
                    key = Some(r.tuple()?);
                    r.tuple_tagged(b'N')?
                }
                b'O' => {
                    old = Some(r.tuple()?);
                    r.tuple_tagged(b'N')?
                }
                b'N' => r.tuple()?,
                other => {
                    return Err(malformed(format!(
                        "update: unknown tuple tag 0x{other:02x}"
                    )))
                }
            };
            Message::Update { rel, key, old, new }
        }
        b'D' => {
            let rel = r.u32("relation OID")?;
            let (mut key, mut old) = (None, None);
            match r.u8("tuple tag")? {
                b'K' => key = Some(r.tuple()?),
                b'O' => old = Some(r.tuple()?),
                other => {
                    return Err(malformed(format!(
                        "delete: unknown tuple tag 0x{other:02x}"
                    )))
                }
            }
            Message::Delete { rel, key, old }
        }
        b'T' => {
            let n = r.u32("relation count")?;
            let options = r.u8("truncate options")?;
            if n as usize > r.buf.len() / 4 {
                return Err(malformed(format!("truncate claims {n} relations")));
            }
            let rels = (0..n)
                .map(|_| r.u32("relation OID"))
                .collect::<CdcResult<Vec<_>>>()?;
            Message::Truncate { options, rels }
        }
        other => return Err(malformed(format!("unknown message tag 0x{other:02x}"))),
    };
    r.done()?;
    Ok(msg)
}

fn put_cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

fn put_tuple(out: &mut Vec<u8>, t: &Tuple) {
    out.extend_from_slice(&(t.len() as i16).to_be_bytes());
    for v in t {
        match v {
            TupleValue::Null => out.push(b'n'),
            TupleValue::Unchanged => out.push(b'u'),
            TupleValue::Text(d) | TupleValue::Binary(d) => {
                out.push(if matches!(v, TupleValue::Text(_)) {
                    b't'
                } else {
                    b'b'
                });
                out.extend_from_slice(&(d.len() as i32).to_be_bytes());
                out.extend_from_slice(d);
            }
        }
    }
}

/// Encodes `msg` as the server would (the inverse of [`decode`] for well-formed messages:
/// names without NUL bytes, at most `i16::MAX` columns).
pub fn encode(msg: &Message) -> Vec<u8> {
    let mut o = Vec::new();
    match msg {
        Message::Begin {
            final_lsn,
            commit_time,
            xid,
        } => {
            o.push(b'B');
            o.extend_from_slice(&final_lsn.to_be_bytes());
            o.extend_from_slice(&commit_time.to_be_bytes());
            o.extend_from_slice(&xid.to_be_bytes());
        }
        Message::Commit {
            flags,
            commit_lsn,
            end_lsn,
            commit_time,
        } => {
            o.push(b'C');
            o.push(*flags);
            o.extend_from_slice(&commit_lsn.to_be_bytes());
            o.extend_from_slice(&end_lsn.to_be_bytes());
            o.extend_from_slice(&commit_time.to_be_bytes());
        }
        Message::Message {
            transactional,
            lsn,
            prefix,
            content,
        } => {
            o.push(b'M');
            o.push(u8::from(*transactional));
            o.extend_from_slice(&lsn.to_be_bytes());
            put_cstr(&mut o, prefix);
            o.extend_from_slice(&(content.len() as i32).to_be_bytes());
            o.extend_from_slice(content);
        }
        Message::Origin { lsn, name } => {
            o.push(b'O');
            o.extend_from_slice(&lsn.to_be_bytes());
            put_cstr(&mut o, name);
        }
        Message::Relation(r) => {
            o.push(b'R');
            o.extend_from_slice(&r.oid.to_be_bytes());
            put_cstr(&mut o, &r.namespace);
            put_cstr(&mut o, &r.name);
            o.push(r.replica_identity);
            o.extend_from_slice(&(r.columns.len() as i16).to_be_bytes());
            for c in &r.columns {
                o.push(u8::from(c.key));
                put_cstr(&mut o, &c.name);
                o.extend_from_slice(&c.type_oid.to_be_bytes());
                o.extend_from_slice(&c.type_mod.to_be_bytes());
            }
        }
        Message::Type {
            oid,
            namespace,
            name,
        } => {
            o.push(b'Y');
            o.extend_from_slice(&oid.to_be_bytes());
            put_cstr(&mut o, namespace);
            put_cstr(&mut o, name);
        }
        Message::Insert { rel, new } => {
            o.push(b'I');
            o.extend_from_slice(&rel.to_be_bytes());
            o.push(b'N');
            put_tuple(&mut o, new);
        }
        Message::Update { rel, key, old, new } => {
            o.push(b'U');
            o.extend_from_slice(&rel.to_be_bytes());
            if let Some(k) = key {
                o.push(b'K');
                put_tuple(&mut o, k);
            } else if let Some(old) = old {
                o.push(b'O');
                put_tuple(&mut o, old);
            }
            o.push(b'N');
            put_tuple(&mut o, new);
        }
        Message::Delete { rel, key, old } => {
            o.push(b'D');
            o.extend_from_slice(&rel.to_be_bytes());
            if let Some(k) = key {
                o.push(b'K');
                put_tuple(&mut o, k);
            } else {
                o.push(b'O');
                put_tuple(&mut o, old.as_ref().unwrap_or(&Vec::new()));
            }
        }
        Message::Truncate { options, rels } => {
            o.push(b'T');
            o.extend_from_slice(&(rels.len() as u32).to_be_bytes());
            o.push(*options);
            for r in rels {
                o.extend_from_slice(&r.to_be_bytes());
            }
        }
    }
    o
}

/// Types a column's text form through its type OID.
///
/// | type | value |
/// |---|---|
/// | `bool` | [`Value::Bool`] |
/// | `int2`, `int4`, `int8` | [`Value::Int`] |
/// | `float4`, `float8` | [`Value::Float`]; `NaN`, `Infinity`, `-Infinity` → [`Value::Text`] |
/// | `text`, `varchar`, `bpchar`, `name` | [`Value::Text`] (`bpchar` keeps its padding) |
/// | `json`, `jsonb` | [`Value::Json`] |
/// | `bytea` | [`Value::Bytes`] (from the `hex` output format) |
/// | anything else (numeric, dates, uuid, arrays, enums, …) | [`Value::Text`] in PostgreSQL's text form |
///
/// # Errors
/// [`CdcError::Malformed`] when the text is not valid UTF-8 or not valid for its type.
pub fn text_value(type_oid: u32, text: &[u8]) -> CdcResult<Value> {
    let bad = |why: &str| CdcError::Malformed {
        what: "column value",
        reason: format!("type OID {type_oid}: {why}"),
    };
    let s = std::str::from_utf8(text).map_err(|_| bad("not UTF-8"))?;
    Ok(match type_oid {
        oid::BOOL => match s {
            "t" | "true" => Value::Bool(true),
            "f" | "false" => Value::Bool(false),
            _ => return Err(bad(&format!("{s:?} is not a bool"))),
        },
        oid::INT2 | oid::INT4 | oid::INT8 => Value::Int(
            s.parse::<i64>()
                .map_err(|_| bad(&format!("{s:?} is not an integer")))?,
        ),
        oid::FLOAT4 | oid::FLOAT8 => match s.parse::<f64>() {
            Ok(f) if f.is_finite() => Value::Float(f),
            Ok(_) => Value::Text(s.to_owned()),
            Err(_) => return Err(bad(&format!("{s:?} is not a float"))),
        },
        oid::JSON | oid::JSONB => {
            Value::Json(serde_json::from_str(s).map_err(|e| bad(&format!("bad JSON: {e}")))?)
        }
        oid::BYTEA => Value::Bytes(decode_bytea(s).ok_or_else(|| bad("bad bytea hex"))?),
        _ => Value::Text(s.to_owned()),
    })
}

fn decode_bytea(s: &str) -> Option<Vec<u8>> {
    let hex = s.strip_prefix("\\x")?;
    if hex.len() % 2 != 0 {
        return None;
    }
    let nib = |c: u8| -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    };
    hex.as_bytes()
        .chunks(2)
        .map(|p| Some(nib(p[0])? << 4 | nib(p[1])?))
        .collect()
}

/// Relations seen on this stream, by OID (the last `R` message wins).
#[derive(Debug, Default)]
pub struct RelationCache {
    rels: HashMap<u32, Arc<Relation>>,
}

impl RelationCache {
    /// Remembers `rel` (replacing an earlier shape).
    pub fn insert(&mut self, rel: Relation) {
        self.rels.insert(rel.oid, Arc::new(rel));
    }

    /// The relation `oid`, if an `R` message announced it.
    pub fn get(&self, oid: u32) -> Option<&Arc<Relation>> {
        self.rels.get(&oid)
    }

    /// Forgets everything (a new session announces relations again).
    pub fn clear(&mut self) {
        self.rels.clear();
    }

    /// `tuple` as named, typed values of `rel`'s columns.
    ///
    /// # Errors
    /// [`CdcError::Malformed`] when the tuple's column count differs from the relation's, for a
    /// binary column (never requested), or a value that does not parse as its type.
    pub fn row(rel: &Relation, tuple: &Tuple) -> CdcResult<Vec<(Arc<str>, Value)>> {
        if tuple.len() != rel.columns.len() {
            return Err(malformed(format!(
                "{}.{}: tuple has {} columns, relation has {}",
                rel.namespace,
                rel.name,
                tuple.len(),
                rel.columns.len()
            )));
        }
        rel.columns
            .iter()
            .zip(tuple)
            .map(|(c, v)| {
                let value = match v {
                    TupleValue::Null => Value::Null,
                    TupleValue::Unchanged => Value::Unchanged,
                    TupleValue::Text(t) => text_value(c.type_oid, t)?,
                    TupleValue::Binary(_) => {
                        return Err(malformed(format!(
                            "column {}: binary format was not requested",
                            c.name
                        )))
                    }
                };
                Ok((Arc::from(c.name.as_str()), value))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_typed_by_oid() {
        assert_eq!(text_value(oid::BOOL, b"t").unwrap(), Value::Bool(true));
        assert_eq!(text_value(oid::INT8, b"-42").unwrap(), Value::Int(-42));
        assert_eq!(text_value(oid::FLOAT8, b"1.5").unwrap(), Value::Float(1.5));
        assert_eq!(
            text_value(oid::FLOAT8, b"NaN").unwrap(),
            Value::Text("NaN".into())
        );
        assert_eq!(
            text_value(oid::FLOAT4, b"-Infinity").unwrap(),
            Value::Text("-Infinity".into())
        );
        assert_eq!(
            text_value(oid::BYTEA, b"\\xdeadBEEF").unwrap(),
            Value::Bytes(vec![0xde, 0xad, 0xbe, 0xef])
        );
        assert_eq!(
            text_value(oid::JSONB, br#"{"a": 1}"#).unwrap(),
            Value::Json(serde_json::json!({"a": 1}))
        );
        assert_eq!(
            text_value(1700, b"1.50").unwrap(),
            Value::Text("1.50".into())
        );
        for (oid, bad) in [
            (oid::BOOL, &b"yes"[..]),
            (oid::INT4, b"1.5"),
            (oid::FLOAT8, b"x"),
            (oid::BYTEA, b"\\x1"),
            (oid::JSON, b"{"),
            (oid::TEXT, b"\xff"),
        ] {
            assert!(
                matches!(text_value(oid, bad), Err(CdcError::Malformed { .. })),
                "{oid} {bad:?}"
            );
        }
    }

    #[test]
    fn refuses_garbage_with_a_typed_error() {
        for bytes in [
            &b""[..],
            b"Z",
            b"B\0\0",
            b"I\0\0\0\x01N\x00\x01x",
            b"I\0\0\0\x01N\xff\xff",
            b"I\0\0\0\x01N\x00\x01t\xff\xff\xff\xff",
            b"T\xff\xff\xff\xff\0",
            b"R\0\0\0\x01ns",
        ] {
            assert!(
                matches!(decode(bytes), Err(CdcError::Malformed { .. })),
                "{bytes:?}"
            );
        }
    }
}
