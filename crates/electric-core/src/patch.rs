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
