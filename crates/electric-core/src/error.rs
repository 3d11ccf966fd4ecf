//! The crate's error type.

use crate::key::Key;
use crate::version::{CommitId, Stamp, Version};

/// A `Result` whose error defaults to [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in `electric-core` and in the stores built on it.
///
/// Errors are classified: [`Error::is_retryable`] tells whether the same call may succeed later
/// (a backend that is briefly unreachable) or will fail again (bad input, a type that does not
/// serialize to a JSON object).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A key part is empty, too long, or holds a reserved character.
    #[error("invalid key {part} {value:?}: {reason}")]
    InvalidKey {
        /// Which part of the key: `partition`, `section` or `id`.
        part: &'static str,
        /// The rejected value.
        value: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A document type serialized to something other than a JSON object.
    #[error("document for {key} serializes to JSON {found}, not an object")]
    NotAnObject {
        /// The document's key.
        key: Key,
        /// The JSON type it serialized to.
        found: &'static str,
    },
    /// A document's type did not serialize (its `Serialize` failed, or a map has keys JSON cannot
    /// hold). Stored data that the type cannot read is [`Error::Malformed`] instead.
    #[error("document for {key} does not (de)serialize: {reason}")]
    Serde {
        /// The document's key.
        key: Key,
        /// The serde error message.
        reason: String,
    },
    /// A document holds a number JSON cannot represent (NaN or an infinity; `serde_json` would
    /// store `null`, which the document's own type may not read back). Nothing was written.
    #[error("document for {key} holds {value} at {path:?}, which JSON cannot represent")]
    NonFiniteNumber {
        /// The document's key.
        key: Key,
        /// RFC 6901 pointer to the number within the document.
        path: String,
        /// The number (NaN, `inf` or `-inf`).
        value: f64,
    },
    /// A document is larger than the configured maximum.
    #[error("document for {key} is {size} bytes, over the limit of {limit}")]
    DocumentTooLarge {
        /// The document's key.
        key: Key,
        /// Its serialized size in bytes.
        size: usize,
        /// The configured limit in bytes.
        limit: usize,
    },
    /// The optimistic-concurrency check kept failing after the configured number of attempts.
    #[error("conflict on {key}: expected {expected:?}, store has {actual:?}")]
    Conflict {
        /// The document's key.
        key: Key,
        /// The stamp the last attempt expected (`None`: expected the key to be absent).
        expected: Option<Stamp>,
        /// The stamp the store reported (`None`: the key is absent).
        actual: Option<Stamp>,
    },
    /// The key does not exist and the document type has no empty value to start from.
    #[error("{key} does not exist")]
    NotFound {
        /// The missing key.
        key: Key,
    },
    /// A version the caller asked for is newer than anything the store holds.
    #[error("{key} is at version {available}, wanted at least {wanted}")]
    VersionUnavailable {
        /// The document's key.
        key: Key,
        /// The version asked for.
        wanted: Version,
        /// The newest version available.
        available: Version,
    },
    /// A patch does not apply to the document (bad pointer, type mismatch, failed test).
    #[error("patch does not apply: {reason}")]
    PatchFailed {
        /// What went wrong, from the patch engine.
        reason: String,
    },
    /// An encoded delta uses an encoding version this build does not understand.
    #[error("unsupported delta encoding version {found} (this build reads {supported})")]
    UnsupportedEncoding {
        /// The version found in the message.
        found: u64,
        /// The version this build reads and writes.
        supported: u64,
    },
    /// An encoded delta, log entry or stored document is malformed.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// What was being decoded (`delta`, `log entry`, `document`…).
        what: &'static str,
        /// Why it was rejected.
        reason: String,
    },
    /// A configuration value is out of range.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// A write may or may not have been applied, and the store could not be asked in time: it
    /// stayed unreachable past the manager's `resolve_deadline`, or no longer holds what would
    /// tell. Not retryable: retrying could apply the change twice. No copy of the write can
    /// apply later without the store saying so ([`Store::resolve`](crate::store::Store::resolve)
    /// fenced it, or the store never answered at all); read the document to see where it stands.
    #[error("outcome of write {commit} to {key} is unknown: {reason}")]
    Indeterminate {
        /// The document.
        key: Key,
        /// The commit (or delete) whose outcome is unknown; it is logged with its delta if it
        /// was applied.
        commit: CommitId,
        /// Why it could not be resolved.
        reason: String,
    },
    /// The backend could not be reached or failed transiently; nothing was written, and the
    /// call may succeed later.
    #[error("backend unavailable: {reason}")]
    Unavailable {
        /// What the backend reported.
        reason: String,
    },
    /// The backend rejected the call for a reason that will not go away by retrying.
    #[error("backend error: {reason}")]
    Backend {
        /// What the backend reported.
        reason: String,
    },
    /// The backend refused our credentials or a command (a wrong password, an ACL user without
    /// the permission a call needs), or its TLS identity could not be verified. Retrying will
    /// not help until the configuration changes; nothing was applied.
    #[error("access denied: {reason}")]
    AccessDenied {
        /// What the backend reported.
        reason: String,
    },
    /// A bounded store is full: creating another document was refused (nothing was written).
    #[error("store is full: {limit} documents")]
    StoreFull {
        /// The configured maximum number of documents.
        limit: usize,
    },
    /// The component was shut down.
    #[error("shut down")]
    Shutdown,
}

impl Error {
    /// Whether retrying the same call later may succeed. [`Error::Indeterminate`] is not
    /// retryable: the first call may have been applied.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Unavailable { .. } | Error::Conflict { .. })
    }

    pub(crate) fn serde(key: &Key, err: impl std::fmt::Display) -> Self {
        Error::Serde {
            key: key.clone(),
            reason: err.to_string(),
        }
    }
}
