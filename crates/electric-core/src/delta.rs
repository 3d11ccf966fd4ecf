//! Deltas: the unit on the wire, in the change log and in events.
//!
//! # Encoding (version 1)
//!
//! A delta is encoded as one JSON object. Readers must reject any `"v"` they do not know
//! ([`Error::UnsupportedEncoding`]) and ignore fields they do not know.
//!
//! ```json
//! {
//!   "v": 1,
//!   "key": {"partition": "intraday", "section": "depths", "id": "MCP_1"},
//!   "epoch": "9f1c2a7b00d4e311",
//!   "base": 41,
//!   "version": 42,
//!   "time": 1764183600123,
//!   "origin": "a1b2c3d4e5f60718",
//!   "kind": "patch",
//!   "ops": [{"op": "replace", "path": "/bids/3/qty", "value": 12.5}],
//!   "commit": "5be0e8a4c2d91f37",
//!   "digest": "160c99d44ed30b4b"
//! }
//! ```
//!
//! | field | meaning |
//! |---|---|
//! | `v` | encoding version, `1` |
//! | `key` | the document's [`Key`] |
//! | `epoch` | the key's lifetime, 16 lowercase hex digits, never all zero |
//! | `base` | the version `ops` apply to (0 when the document is created) |
//! | `version` | the version after applying `ops`; greater than `base` |
//! | `time` | change time, milliseconds since the Unix epoch, set by the store |
//! | `origin` | who wrote it (a manager id, or a foreign writer's name) |
//! | `kind` | `patch` (apply `ops` to `base`), `snapshot` (`ops` is one whole-document `replace` at `""`, valid on any base) or `delete` (the key is gone; `ops` is empty) |
//! | `ops` | an RFC 6902 JSON Patch |
//! | `commit` | optional: the id of the commit (or delete) that wrote this version, 16 lowercase hex digits ([`CommitId`]) |
//! | `digest` | optional: the [`Digest`] of the document at `version`, 16 lowercase hex digits (absent for deletes and for writers that do not compute one) |
//!
//! `commit` and `digest` were added without changing `v`: readers ignore fields they do not
//! know, so older readers read these deltas, and deltas without them (older writers, foreign
//! writers) decode with both absent.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::key::Key;
use crate::version::{CommitId, Epoch, Stamp, Version};

pub use json_patch::{Patch, PatchOperation};

/// The delta encoding version this build reads and writes.
pub const ENCODING_VERSION: u64 = 1;

/// What a delta does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeltaKind {
    /// `ops` turns version `base` into `version`.
    Patch,
    /// `ops` replaces the whole document; it applies on any base.
    Snapshot,
    /// The key was deleted.
    Delete,
}

/// One committed change of one document.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Delta {
    /// The document.
    pub key: Key,
    /// The key's lifetime the change belongs to.
    pub epoch: Epoch,
    /// The version `ops` apply to.
    pub base: Version,
    /// The version after the change.
    pub version: Version,
    /// Change time, milliseconds since the Unix epoch.
    #[serde(rename = "time")]
    pub change_time: u64,
    /// Who wrote the change.
    pub origin: String,
    /// What the change does.
    pub kind: DeltaKind,
    /// The RFC 6902 patch.
    pub ops: Patch,
    /// The commit (or delete) that wrote this version, when the writer gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<CommitId>,
    /// The digest of the document at `version`, when the writer computed one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<Digest>,
}

#[derive(Serialize)]
struct WireOut<'a> {
    v: u64,
    #[serde(flatten)]
    delta: &'a Delta,
}

/// The decoding side of the wire format: every field named (a `#[serde(flatten)]` would buffer
/// the whole delta into serde's `Content` first), and `ops` read by [`ops`] rather than
/// through `json_patch`'s internally tagged enum (which buffers each operation the same way).
/// Unknown fields are ignored, as they always were.
#[derive(Deserialize)]
struct WireIn {
    v: u64,
    key: Key,
    epoch: Epoch,
    base: Version,
    version: Version,
    time: u64,
    origin: String,
    kind: DeltaKind,
    #[serde(deserialize_with = "ops::deserialize")]
    ops: Patch,
    #[serde(default)]
    commit: Option<CommitId>,
    #[serde(default)]
    digest: Option<Digest>,
}

impl From<WireIn> for Delta {
    fn from(w: WireIn) -> Delta {
        Delta {
            key: w.key,
            epoch: w.epoch,
            base: w.base,
            version: w.version,
            change_time: w.time,
            origin: w.origin,
            kind: w.kind,
            ops: w.ops,
            commit: w.commit,
            digest: w.digest,
        }
    }
}

/// Reads an RFC 6902 patch as `json_patch::Patch` does (same operations, same errors for a
/// missing member or a bad pointer, unknown members ignored), one operation at a time.
mod ops {
    use std::fmt;

    use json_patch::jsonptr::PointerBuf;
    use json_patch::{
        AddOperation, CopyOperation, MoveOperation, Patch, PatchOperation, RemoveOperation,
        ReplaceOperation, TestOperation,
    };
    use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
    use serde_json::Value;

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Patch, D::Error> {
        d.deserialize_seq(Ops).map(Patch)
    }

    struct Ops;

    impl<'de> Visitor<'de> for Ops {
        type Value = Vec<PatchOperation>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON Patch (an array of operations)")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut ops = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
            while let Some(Op(op)) = seq.next_element()? {
                ops.push(op);
            }
            Ok(ops)
        }
    }

    struct Op(PatchOperation);

    impl<'de> de::Deserialize<'de> for Op {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_map(OpVisitor).map(Op)
        }
    }

    struct OpVisitor;

    impl<'de> Visitor<'de> for OpVisitor {
        type Value = PatchOperation;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON Patch operation")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let (mut op, mut path, mut from, mut value) = (None::<String>, None, None, None);
            while let Some(k) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                let dup = match k.as_ref() {
                    "op" => op.replace(map.next_value()?).is_some(),
                    "path" => path.replace(pointer::<A>(map.next_value()?)?).is_some(),
                    "from" => from.replace(pointer::<A>(map.next_value()?)?).is_some(),
                    "value" => value.replace(map.next_value::<Value>()?).is_some(),
                    _ => {
                        map.next_value::<IgnoredAny>()?;
                        false
                    }
                };
                if dup {
                    return Err(de::Error::custom(format_args!("duplicate field `{k}`")));
                }
            }
            let missing = |field: &'static str| -> A::Error { de::Error::missing_field(field) };
            let op = op.ok_or_else(|| missing("op"))?;
            Ok(match op.as_str() {
                "add" => PatchOperation::Add(AddOperation {
                    path: path.ok_or_else(|| missing("path"))?,
                    value: value.ok_or_else(|| missing("value"))?,
                }),
                "remove" => PatchOperation::Remove(RemoveOperation {
                    path: path.ok_or_else(|| missing("path"))?,
                }),
                "replace" => PatchOperation::Replace(ReplaceOperation {
                    path: path.ok_or_else(|| missing("path"))?,
                    value: value.ok_or_else(|| missing("value"))?,
                }),
                "move" => PatchOperation::Move(MoveOperation {
                    from: from.ok_or_else(|| missing("from"))?,
                    path: path.ok_or_else(|| missing("path"))?,
                }),
                "copy" => PatchOperation::Copy(CopyOperation {
                    from: from.ok_or_else(|| missing("from"))?,
                    path: path.ok_or_else(|| missing("path"))?,
                }),
                "test" => PatchOperation::Test(TestOperation {
                    path: path.ok_or_else(|| missing("path"))?,
                    value: value.ok_or_else(|| missing("value"))?,
                }),
                other => {
                    return Err(de::Error::unknown_variant(
                        other,
                        &["add", "remove", "replace", "move", "copy", "test"],
                    ))
                }
            })
        }
    }

    fn pointer<'de, A: MapAccess<'de>>(s: String) -> Result<PointerBuf, A::Error> {
        PointerBuf::parse(s).map_err(de::Error::custom)
    }
}

#[derive(Deserialize)]
struct Probe {
    v: Option<u64>,
}

impl Delta {
    /// The stamp after this delta.
    pub fn stamp(&self) -> Stamp {
        Stamp {
            epoch: self.epoch,
            version: self.version,
        }
    }

    /// Builds a snapshot delta carrying the whole `doc`.
    pub fn snapshot_ops(doc: Value) -> Patch {
        Patch(vec![PatchOperation::Replace(
            json_patch::ReplaceOperation {
                path: Default::default(),
                value: doc,
            },
        )])
    }

    /// Encodes the delta as version-1 JSON.
    pub fn encode(&self) -> Vec<u8> {
        // Serializing a Delta cannot fail: every field is plain data with string keys.
        serde_json::to_vec(&WireOut {
            v: ENCODING_VERSION,
            delta: self,
        })
        .unwrap_or_default()
    }

    /// Decodes and validates a delta.
    ///
    /// # Errors
    ///
    /// [`Error::UnsupportedEncoding`] for another `"v"`; [`Error::Malformed`] for anything that is
    /// not a well-formed version-1 delta (bad key, `version <= base`, a delete carrying ops, a
    /// snapshot that is not a single root replace of an object).
    pub fn decode(bytes: &[u8]) -> Result<Delta> {
        let delta = match serde_json::from_slice::<WireIn>(bytes) {
            Ok(w) if w.v == ENCODING_VERSION => Delta::from(w),
            Ok(w) => {
                return Err(Error::UnsupportedEncoding {
                    found: w.v,
                    supported: ENCODING_VERSION,
                })
            }
            Err(e) => {
                return Err(match serde_json::from_slice::<Probe>(bytes) {
                    Ok(Probe { v: Some(v) }) if v != ENCODING_VERSION => {
                        Error::UnsupportedEncoding {
                            found: v,
                            supported: ENCODING_VERSION,
                        }
                    }
                    _ => Error::Malformed {
                        what: "delta",
                        reason: e.to_string(),
                    },
                })
            }
        };
        delta.validate()?;
        Ok(delta)
    }

    /// Checks the invariants every delta must hold.
    ///
    /// # Errors
    ///
    /// [`Error::Malformed`] naming the broken invariant.
    pub fn validate(&self) -> Result<()> {
        let bad = |reason: &str| {
            Err(Error::Malformed {
                what: "delta",
                reason: format!("{}: {reason}", self.key),
            })
        };
        if self.version <= self.base {
            return bad("version must be greater than base");
        }
        match self.kind {
            DeltaKind::Delete if !self.ops.0.is_empty() => bad("a delete carries no ops"),
            DeltaKind::Snapshot => match self.ops.0.as_slice() {
                [PatchOperation::Replace(r)] if r.path.is_root() && r.value.is_object() => Ok(()),
                _ => bad("a snapshot is one replace of the root with an object"),
            },
            _ => Ok(()),
        }
    }
}

/// Shared, immutable delta as passed between components.
pub type SharedDelta = Arc<Delta>;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// `ops::deserialize` reads exactly what `json_patch::Patch`'s own `Deserialize` reads, and
    /// rejects what it rejects: every patch of the RFC 6902 test suites, plus edge cases.
    #[test]
    fn ops_decode_like_json_patch() {
        let fast =
            |v: &Value| ops::deserialize(v.clone()).map_err(|e: serde_json::Error| e.to_string());
        let slow =
            |v: &Value| serde_json::from_value::<Patch>(v.clone()).map_err(|e| e.to_string());
        let mut patches: Vec<Value> = Vec::new();
        for file in ["tests.json", "spec_tests.json"] {
            let path = format!(
                "{}/tests/data/json-patch-tests/{file}",
                env!("CARGO_MANIFEST_DIR")
            );
            let text = std::fs::read_to_string(&path).expect("conformance data");
            let cases: Vec<Value> = serde_json::from_str(&text).expect("conformance JSON");
            patches.extend(cases.into_iter().filter_map(|c| c.get("patch").cloned()));
        }
        assert!(patches.len() > 100, "{} patches", patches.len());
        patches.extend([
            json!([{"op": "add", "path": "/a~1b/~0", "value": null, "extra": [1]}]),
            json!([{"value": 1, "path": "", "op": "test"}]),
            json!([{"op": "move", "from": "/a", "path": "/b"}, {"op": "copy", "from": "/b", "path": "/c"}]),
            json!([{"op": "add", "path": "/a"}]),
            json!([{"op": "remove"}]),
            json!([{"op": "move", "path": "/a"}]),
            json!([{"op": "jump", "path": "/a"}]),
            json!([{"op": 1, "path": "/a"}]),
            json!([{"path": "/a"}]),
            json!([{"op": "remove", "path": "a"}]),
            json!([{"op": "remove", "path": "/a", "path": "/b"}]),
            json!({"op": "remove", "path": "/a"}),
            json!([[]]),
            json!([]),
        ]);
        for p in &patches {
            match (fast(p), slow(p)) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{p}"),
                (Err(_), Err(_)) => {}
                (a, b) => panic!("{p}: ours {a:?}, json_patch {b:?}"),
            }
        }
    }

    fn sample() -> Delta {
        Delta {
            key: Key::new("p", "s", "x").unwrap(),
            epoch: Epoch::from_raw(0x9f1c_2a7b_00d4_e311).unwrap(),
            base: 41,
            version: 42,
            change_time: 1_764_183_600_123,
            origin: "w1".into(),
            kind: DeltaKind::Patch,
            ops: serde_json::from_value(json!([{"op":"replace","path":"/a","value":1}])).unwrap(),
            commit: CommitId::from_raw(0x5be0_e8a4_c2d9_1f37),
            digest: Some(Digest::from_raw(0x160c_99d4_4ed3_0b4b)),
        }
    }

    #[test]
    fn commit_and_digest_are_optional_and_older_deltas_decode() {
        let d = sample();
        let v: Value = serde_json::from_slice(&d.encode()).unwrap();
        assert_eq!(v["commit"], "5be0e8a4c2d91f37");
        assert_eq!(v["digest"], "160c99d44ed30b4b");
        // A delta as version-1 writers wrote it before these fields existed.
        let mut old = v.clone();
        let o = old.as_object_mut().unwrap();
        o.remove("commit");
        o.remove("digest");
        let decoded = Delta::decode(&serde_json::to_vec(&old).unwrap()).unwrap();
        assert_eq!((decoded.commit, decoded.digest), (None, None));
        assert_eq!(decoded.version, d.version);
        let mut bare = d.clone();
        (bare.commit, bare.digest) = (None, None);
        let text = String::from_utf8(bare.encode()).unwrap();
        assert!(
            !text.contains("commit") && !text.contains("digest"),
            "{text}"
        );
        let mut bad = v;
        bad["digest"] = json!("not hex");
        assert!(matches!(
            Delta::decode(&serde_json::to_vec(&bad).unwrap()),
            Err(Error::Malformed { .. })
        ));
    }

    #[test]
    fn round_trips_with_documented_fields() {
        let d = sample();
        let bytes = d.encode();
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["v"], 1);
        assert_eq!(v["epoch"], "9f1c2a7b00d4e311");
        assert_eq!(v["time"], 1_764_183_600_123u64);
        assert_eq!(v["kind"], "patch");
        assert_eq!(Delta::decode(&bytes).unwrap(), d);
    }

    #[test]
    fn rejects_unknown_encoding_and_garbage() {
        let mut v: Value = serde_json::from_slice(&sample().encode()).unwrap();
        v["v"] = json!(2);
        let err = Delta::decode(&serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert!(
            matches!(err, Error::UnsupportedEncoding { found: 2, .. }),
            "{err}"
        );
        v["v"] = json!(7);
        v["ops"] = json!("not a patch");
        let err = Delta::decode(&serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert!(
            matches!(err, Error::UnsupportedEncoding { found: 7, .. }),
            "{err}"
        );
        for garbage in [&b"{"[..], b"[]", b"null", b"{\"v\":1}"] {
            assert!(matches!(
                Delta::decode(garbage),
                Err(Error::Malformed { .. })
            ));
        }
    }

    #[test]
    fn rejects_broken_invariants() {
        let mut d = sample();
        d.version = d.base;
        assert!(matches!(
            Delta::decode(&d.encode()),
            Err(Error::Malformed { .. })
        ));
        let mut d = sample();
        d.kind = DeltaKind::Snapshot;
        assert!(Delta::decode(&d.encode()).is_err());
        d.ops = Delta::snapshot_ops(json!({"a": 1}));
        assert!(Delta::decode(&d.encode()).is_ok());
        let mut d = sample();
        d.kind = DeltaKind::Delete;
        assert!(Delta::decode(&d.encode()).is_err());
        let mut v: Value = serde_json::from_slice(&sample().encode()).unwrap();
        v["key"]["id"] = json!("a:b");
        assert!(Delta::decode(&serde_json::to_vec(&v).unwrap()).is_err());
    }
}
