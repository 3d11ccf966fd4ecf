//! JSON Patch (RFC 6902): diff and apply.
//!
//! PLACEHOLDER: `diff` delegates to `json_patch::diff` until the fast diff lands.

use serde_json::Value;

use crate::delta::Patch;
use crate::error::{Error, Result};

/// Computes a patch turning `old` into `new`.
pub fn diff(old: &Value, new: &Value) -> Patch {
    json_patch::diff(old, new)
}

/// Applies `ops` to `doc`. On error `doc` is left unchanged.
///
/// # Errors
///
/// [`Error::PatchFailed`] when an operation does not apply.
pub fn apply(doc: &mut Value, ops: &Patch) -> Result<()> {
    json_patch::patch(doc, &ops.0).map_err(|e| Error::PatchFailed {
        reason: e.to_string(),
    })
}

struct Counter(usize);

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Serialized size of a patch in bytes.
pub fn patch_size(ops: &Patch) -> usize {
    let mut c = Counter(0);
    let _ = serde_json::to_writer(&mut c, ops);
    c.0
}

/// Serialized size of a JSON value in bytes.
pub fn json_size(v: &Value) -> usize {
    let mut c = Counter(0);
    let _ = serde_json::to_writer(&mut c, v);
    c.0
}
