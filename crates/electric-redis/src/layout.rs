//! Key and channel names.
//!
//! With namespace `ns` (default `electric`) and a document `partition:section:id`:
//!
//! | name | type | holds |
//! |---|---|---|
//! | `ns:{partition:section:id}:doc` | hash | `__v` version, `__e` epoch (16 hex digits), `__t` change time (Unix ms), `__d` the version's digest (16 hex digits, when its writer gave one), and `.name` → JSON of each top-level member `name` |
//! | `ns:{partition:section:id}:log` | stream | the change log: entry id `<version>-0`, field `d` = the delta's version-1 JSON, field `c` = its commit id |
//! | `ns:{partition:section:id}:fence` | sorted set | the creates and deletes of the last fence lifetime (member: commit id; score: milliseconds × 4 + 0 created, 1 refused by a resolution, 2 deleted, 3 deleted nothing), so a late copy of one cannot apply |
//! | `ns:deltas:partition:section` | pub/sub channel | every committed delta of the section, version-1 JSON |
//!
//! The part in braces is the Redis Cluster hash tag: a document's hash and log live in one slot,
//! so the commit script touches a single node. Key parts never contain `{`, `}` or `:`
//! ([`electric_core::key::RESERVED_KEY_CHARS`]), so names cannot collide or leak across tags.
//!
//! Member fields carry the prefix [`MEMBER_PREFIX`] (`.`), so any JSON member name is allowed
//! (`__v` included) and can never overwrite a reserved field.

use electric_core::{Key, SectionId};

/// Prefix of member fields in the document hash.
pub const MEMBER_PREFIX: &str = ".";
/// Hash field holding the version.
pub const VERSION_FIELD: &str = "__v";
/// Hash field holding the epoch.
pub const EPOCH_FIELD: &str = "__e";
/// Hash field holding the change time.
pub const TIME_FIELD: &str = "__t";
/// Hash field holding the version's digest.
pub const DIGEST_FIELD: &str = "__d";
/// Stream field holding a log entry's delta.
pub const LOG_FIELD: &str = "d";
/// Stream field holding a log entry's commit id.
pub const LOG_COMMIT_FIELD: &str = "c";

/// Builds the names of one namespace.
#[derive(Clone, Debug)]
pub struct Layout {
    ns: String,
}

impl Layout {
    /// Names in namespace `ns` (already validated).
    pub(crate) fn new(ns: String) -> Self {
        Layout { ns }
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.ns
    }

    /// The document hash of `key`.
    pub fn doc_key(&self, key: &Key) -> String {
        format!(
            "{}:{{{}:{}:{}}}:doc",
            self.ns,
            key.partition(),
            key.section(),
            key.id()
        )
    }

    /// The change-log stream of `key`.
    pub fn log_key(&self, key: &Key) -> String {
        format!(
            "{}:{{{}:{}:{}}}:log",
            self.ns,
            key.partition(),
            key.section(),
            key.id()
        )
    }

    /// The fence set of `key` (records of creates and deletes).
    pub fn fence_key(&self, key: &Key) -> String {
        format!(
            "{}:{{{}:{}:{}}}:fence",
            self.ns,
            key.partition(),
            key.section(),
            key.id()
        )
    }

    /// The delta channel of `section`.
    pub fn channel(&self, section: &SectionId) -> String {
        format!(
            "{}:deltas:{}:{}",
            self.ns,
            section.partition(),
            section.section()
        )
    }

    /// A `SCAN MATCH` pattern covering every key of the namespace.
    pub fn pattern(&self) -> String {
        format!("{}:{{*", self.ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_share_the_hash_tag() {
        let l = Layout::new("ns".into());
        let k = Key::new("p", "s", "x").unwrap();
        assert_eq!(l.doc_key(&k), "ns:{p:s:x}:doc");
        assert_eq!(l.log_key(&k), "ns:{p:s:x}:log");
        assert_eq!(l.fence_key(&k), "ns:{p:s:x}:fence");
        assert_eq!(l.channel(&k.section_id()), "ns:deltas:p:s");
    }
}
