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
//!   "ops": [{"op": "replace", "path": "/bids/3/qty", "value": 12.5}]
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

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::key::Key;
use crate::version::{Epoch, Stamp, Version};

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
}

#[derive(Serialize)]
struct WireOut<'a> {
    v: u64,
    #[serde(flatten)]
    delta: &'a Delta,
}

#[derive(Deserialize)]
struct WireIn {
    v: u64,
    #[serde(flatten)]
    delta: Delta,
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
            Ok(w) if w.v == ENCODING_VERSION => w.delta,
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
        }
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
