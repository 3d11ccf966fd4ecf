//! Content digests: what a document *is*, in 64 bits, kept with every version.
//!
//! Every committed version carries the digest of the document the writer produced; the store
//! keeps it with the version (`Snapshot::digest`, `Head::digest`) and the delta carries it
//! (`Delta::digest`). A replica computes the digest of what it holds after applying a delta
//! and compares: a forged, corrupted or misapplied delta shows as a mismatch and the document is
//! reloaded (`RepairReason::Digest`), and anti-entropy compares digests as well as stamps.
//!
//! The digest is a sum over the document's nodes, so a change costs in proportion to what it
//! touches: replacing a leaf subtracts the old leaf's term and adds the new one's, without
//! walking the rest of the document. It protects against accidents (bugs, foreign writers,
//! misrouted or replayed messages), not against an adversary who can publish on the channel:
//! it is not keyed and a 64-bit sum can be forged on purpose. Keep the channel private (Redis
//! ACLs) for that.
//!
//! # Definition (digest version 1)
//!
//! All arithmetic is on unsigned 64-bit integers, wrapping. `xxh3(b)` is XXH3-64 of the bytes
//! `b` with seed 0; `mum(a, b)` multiplies `a` and `b` into 128 bits and XORs the high and low
//! halves. The constants `K0` … `K9` are listed in the source ([`K`]).
//!
//! - The **path hash** of the root is `K0`; a child's is `mum(parent ^ K1, xxh3(token) ^ K2)`,
//!   where `token` is the member name (UTF-8, unescaped) or the array index in decimal ASCII.
//! - The **node hash** of `null` is `K3`, of `true` `K4`, of `false` `K5`, of an object `K6`,
//!   of an array `K7`; of a string `s` it is `mum(xxh3(s) ^ K8, K9)`. A number that is a whole
//!   value `n` with `0 <= n < 2^64` hashes as `mum(n ^ K3, K8)`; a whole negative `n >= -2^63`
//!   as `mum(n as two's complement ^ K4, K8)`; any other number as `mum(bits(f64) ^ K5, K8)`.
//!   (So `2`, `2.0` and `-0.0` vs `0` hash alike: JSON does not tell them apart either.)
//! - The **term** of a node is `mum(path hash ^ K1, node hash ^ K9)`.
//! - The **digest** is the sum of the terms of every node, the root object included.
//!
//! The digest is computed over the document as the writer's type serializes it; managers of
//! one section are expected to use the same type (or types that serialize the same members).

use std::fmt;
use std::str::FromStr;

use json_patch::jsonptr::Pointer;
use json_patch::PatchOperation;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Number, Value};
use xxhash_rust::xxh3::xxh3_64;

/// The constants of the definition (from the digits of π, as 64-bit words).
pub const K: [u64; 10] = [
    0x243f_6a88_85a3_08d3,
    0x1319_8a2e_0370_7344,
    0xa409_3822_299f_31d0,
    0x082e_fa98_ec4e_6c89,
    0x4528_21e6_38d0_1377,
    0xbe54_66cf_34e9_0c6c,
    0xc0ac_29b7_c97c_50dd,
    0x3f84_d5b5_b547_0917,
    0x9216_d5d9_8979_fb1b,
    0xd131_0ba6_98df_b5ac,
];

/// The digest of one version of a document; shown as 16 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest(u64);

impl Digest {
    /// Wraps a raw value.
    pub fn from_raw(v: u64) -> Self {
        Digest(v)
    }

    /// The raw value.
    pub fn get(self) -> u64 {
        self.0
    }

    /// The digest of a document.
    pub fn of(doc: &Map<String, Value>) -> Digest {
        let mut sum = term(K[0], K[6]);
        for (name, value) in doc {
            sum = sum.wrapping_add(subtree(child(K[0], name.as_bytes()), value));
        }
        Digest(sum)
    }

    /// The digest after replacing the value at `path` (`old`, or nothing) with `new` (or
    /// nothing): `self` minus the old subtree's terms plus the new one's. Exact for a change that
    /// moves no other node: a replace, an object member added or removed, an array element
    /// appended or removed at the end.
    pub(crate) fn replaced(
        self,
        path: &Pointer,
        old: Option<&Value>,
        new: Option<&Value>,
    ) -> Digest {
        let p = path_hash(path);
        let minus = old.map_or(0, |v| subtree(p, v));
        let plus = new.map_or(0, |v| subtree(p, v));
        Digest(self.0.wrapping_sub(minus).wrapping_add(plus))
    }

    /// The digest after `ops`, given for each operation what was at its path before (`None` for
    /// an `add`). Exact for the operations [`diff`](crate::patch::diff) and `update` emit (adds
    /// and removes only at the ends of arrays) and for patches of `replace` operations, which
    /// change nothing but their own paths; `None` for a `move` or `copy`, whose digest the
    /// caller computes from the whole document instead.
    pub(crate) fn after<'v>(
        self,
        ops: &[PatchOperation],
        olds: impl IntoIterator<Item = Option<&'v Value>>,
    ) -> Option<Digest> {
        ops.iter()
            .zip(olds)
            .try_fold(self, |d, (op, old)| match op {
                PatchOperation::Replace(r) => Some(d.replaced(&r.path, old, Some(&r.value))),
                PatchOperation::Add(a) => Some(d.replaced(&a.path, old, Some(&a.value))),
                PatchOperation::Remove(r) => Some(d.replaced(&r.path, old, None)),
                PatchOperation::Test(_) => Some(d),
                PatchOperation::Move(_) | PatchOperation::Copy(_) => None,
            })
    }
}

#[inline]
fn mum(a: u64, b: u64) -> u64 {
    let r = u128::from(a) * u128::from(b);
    (r as u64) ^ ((r >> 64) as u64)
}

#[inline]
fn child(parent: u64, token: &[u8]) -> u64 {
    mum(parent ^ K[1], xxh3_64(token) ^ K[2])
}

#[inline]
fn term(path: u64, node: u64) -> u64 {
    mum(path ^ K[1], node ^ K[9])
}

fn index_token(i: usize, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    let mut i = i;
    loop {
        at -= 1;
        buf[at] = b'0' + (i % 10) as u8;
        i /= 10;
        if i == 0 {
            return &buf[at..];
        }
    }
}

fn number(n: &Number) -> u64 {
    if let Some(u) = n.as_u64() {
        return mum(u ^ K[3], K[8]);
    }
    if let Some(i) = n.as_i64() {
        return mum((i as u64) ^ K[4], K[8]);
    }
    let f = n.as_f64().unwrap_or(0.0);
    // A whole float in range hashes as the integer it equals.
    if f.fract() == 0.0 {
        if (0.0..18_446_744_073_709_551_616.0).contains(&f) {
            return mum((f as u64) ^ K[3], K[8]);
        }
        if (-9_223_372_036_854_775_808.0..0.0).contains(&f) {
            return mum((f as i64 as u64) ^ K[4], K[8]);
        }
    }
    mum(f.to_bits() ^ K[5], K[8])
}

/// The sum of the terms of `v` and everything under it, `v` sitting at path hash `p`.
fn subtree(p: u64, v: &Value) -> u64 {
    match v {
        Value::Null => term(p, K[3]),
        Value::Bool(true) => term(p, K[4]),
        Value::Bool(false) => term(p, K[5]),
        Value::Number(n) => term(p, number(n)),
        Value::String(s) => term(p, mum(xxh3_64(s.as_bytes()) ^ K[8], K[9])),
        Value::Array(items) => {
            let mut buf = [0u8; 20];
            items
                .iter()
                .enumerate()
                .fold(term(p, K[7]), |sum, (i, item)| {
                    sum.wrapping_add(subtree(child(p, index_token(i, &mut buf)), item))
                })
        }
        Value::Object(map) => map.iter().fold(term(p, K[6]), |sum, (name, item)| {
            sum.wrapping_add(subtree(child(p, name.as_bytes()), item))
        }),
    }
}

/// The path hash of `path`.
fn path_hash(path: &Pointer) -> u64 {
    path.tokens()
        .fold(K[0], |p, t| child(p, t.decoded().as_bytes()))
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

impl FromStr for Digest {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.len() != 16 {
            return Err(format!("digest {s:?} is not 16 hex digits"));
        }
        u64::from_str_radix(s, 16)
            .map(Digest)
            .map_err(|e| format!("digest {s:?}: {e}"))
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use json_patch::jsonptr::PointerBuf;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    fn d(v: Value) -> Digest {
        Digest::of(&obj(v))
    }

    #[test]
    fn tells_documents_apart_and_equal_ones_alike() {
        let a = json!({"a": 1, "b": [1, 2, {"c": "x"}], "e": {}, "f": []});
        assert_eq!(d(a.clone()), d(a.clone()));
        let different = [
            json!({"a": 2, "b": [1, 2, {"c": "x"}], "e": {}, "f": []}),
            json!({"a": 1, "b": [2, 1, {"c": "x"}], "e": {}, "f": []}),
            json!({"a": 1, "b": [1, 2, {"c": "y"}], "e": {}, "f": []}),
            json!({"a": 1, "b": [1, 2, {"d": "x"}], "e": {}, "f": []}),
            json!({"a": 1, "b": [1, 2, {"c": "x"}], "e": [], "f": {}}),
            json!({"a": 1, "b": [1, 2, {"c": "x"}], "e": {}}),
            json!({"a": 1, "b": {"0": 1, "1": 2, "2": {"c": "x"}}, "e": {}, "f": []}),
            json!({"a": "1", "b": [1, 2, {"c": "x"}], "e": {}, "f": []}),
            json!({"a": null, "b": [1, 2, {"c": "x"}], "e": {}, "f": []}),
            json!({"a": 1.5, "b": [1, 2, {"c": "x"}], "e": {}, "f": []}),
            json!({"a": -1, "b": [1, 2, {"c": "x"}], "e": {}, "f": []}),
            json!({"b": [1, 2, {"c": "x"}], "e": {}, "f": [], "a": 1, "g": false}),
        ];
        for other in different {
            assert_ne!(d(a.clone()), d(other.clone()), "{other}");
        }
        // Member order does not matter; whole numbers are numbers, however written.
        assert_eq!(d(json!({"x": 1, "y": 2})), d(json!({"y": 2, "x": 1})));
        assert_eq!(d(json!({"x": 2})), d(json!({"x": 2.0})));
        assert_eq!(d(json!({"x": -3})), d(json!({"x": -3.0})));
        assert_eq!(d(json!({"x": 0})), d(json!({"x": -0.0})));
        assert_ne!(d(json!({"x": u64::MAX})), d(json!({"x": -1})));
        assert_ne!(d(json!({"x": true})), d(json!({"x": false})));
        assert_ne!(d(json!({})), d(json!({"x": {}})));
    }

    #[test]
    fn a_replaced_subtree_updates_the_digest_exactly() {
        let before = obj(json!({"a": {"b": [1, 2, 3]}, "c": "x", "d/e~": [true]}));
        let cases = [
            ("/a/b/1", Some(json!(2)), Some(json!({"deep": [null]}))),
            ("/c", Some(json!("x")), None),
            ("/new", None, Some(json!([1, {"k": 2}]))),
            ("/a/b/3", None, Some(json!(4))),
            ("/d~1e~0/0", Some(json!(true)), Some(json!(false))),
            ("/a", Some(json!({"b": [1, 2, 3]})), Some(json!(7.25))),
        ];
        for (path, old, new) in cases {
            let path = PointerBuf::parse(path).unwrap();
            let mut after = Value::Object(before.clone());
            match &new {
                Some(n) => {
                    let parent = after.pointer_mut(path.parent().unwrap().as_str()).unwrap();
                    let last = path.last().unwrap().decoded().into_owned();
                    match parent {
                        Value::Object(m) => {
                            m.insert(last, n.clone());
                        }
                        Value::Array(a) => {
                            let i: usize = last.parse().unwrap();
                            if i == a.len() {
                                a.push(n.clone());
                            } else {
                                a[i] = n.clone();
                            }
                        }
                        _ => unreachable!(),
                    }
                }
                None => {
                    let parent = after.pointer_mut(path.parent().unwrap().as_str()).unwrap();
                    let last = path.last().unwrap().decoded().into_owned();
                    parent.as_object_mut().unwrap().remove(&last);
                }
            }
            let incremental = Digest::of(&before).replaced(&path, old.as_ref(), new.as_ref());
            assert_eq!(
                incremental,
                Digest::of(after.as_object().unwrap()),
                "{path}"
            );
        }
    }

    #[test]
    fn round_trips_as_hex_and_is_pinned() {
        let x = d(json!({"a": [1, "two", 3.5, null, true]}));
        let s = serde_json::to_string(&x).unwrap();
        assert_eq!(serde_json::from_str::<Digest>(&s).unwrap(), x);
        assert!("xyz".parse::<Digest>().is_err());
        // The definition is part of the wire format: a change here breaks every stored digest.
        assert_eq!(
            d(json!({})).to_string(),
            format!("{:016x}", term(K[0], K[6]))
        );
        // Also what `docs/tools/digest_ref.py`, written from the definition alone, computes.
        assert_eq!(x.to_string(), "160c99d44ed30b4b");
    }
}
