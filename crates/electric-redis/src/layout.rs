//! Key and channel names, and how a document is laid out in its hash.
//!
//! With namespace `ns` (default `electric`) and a document `partition:section:id`:
//!
//! | name | type | holds |
//! |---|---|---|
//! | `ns:{partition:section:id}:doc` | hash | `__v` version, `__e` epoch (16 hex digits), `__t` change time (Unix ms), `__d` the version's digest (16 hex digits, when its writer gave one), and the members (below) |
//! | `ns:{partition:section:id}:log` | stream | the change log: entry id `<version>-0`, field `d` = the delta's version-1 JSON, field `c` = its commit id |
//! | `ns:{partition:section:id}:fence` | sorted set | the creates and deletes of the last fence lifetime (member: commit id; score: milliseconds × 4 + 0 created, 1 refused by a resolution, 2 deleted, 3 deleted nothing), so a late copy of one cannot apply |
//! | `ns:deltas:partition:section` | pub/sub channel | every committed delta of the section, version-1 JSON |
//!
//! The part in braces is the Redis Cluster hash tag: a document's hash and log live in one slot,
//! so the commit script touches a single node. Key parts never contain `{`, `}` or `:`
//! ([`electric_core::key::RESERVED_KEY_CHARS`]), so names cannot collide or leak across tags.
//!
//! # Members
//!
//! Each top-level member `name` is held in one of two forms:
//!
//! | form | fields |
//! |---|---|
//! | whole | `.name` → the member's JSON |
//! | element by element (an array of at least two elements whose first is an object or an array: see [`split`]) | `#name` → the number of elements `n`; `*<i>.name` → the JSON of element `i`, for every `i` in `0..n` |
//!
//! A load reads the hash (`HGETALL`) and joins each split member's elements, in index order,
//! into the member's text (`[e0,e1,…]`), so readers see the same document either way. A commit
//! writes only what its patch changes: an operation inside element `i` (or replacing it)
//! rewrites the field `*<i>.name` alone; one that adds or removes elements, or replaces the
//! member, rewrites the member in its new form and removes the fields of its old one. For the
//! bench's order book a five-leaf change writes three levels of about 70 bytes each instead of
//! both 1.7 KB sides.
//!
//! The prefixes `.`, `#`, `*` and `__` keep the forms and the reserved fields apart, so any JSON
//! member name is allowed (`__v` included) and none can overwrite another's fields.
//!
//! **The earlier layout** held every member whole. Such hashes are valid here and load as they
//! are; the first commit that changes an element of an array member held whole is refused by
//! the script before it writes anything (it names the member), and sent again writing that
//! member element by element: the document migrates member by member, on first write
//! ([`Stats::members_migrated`](crate::Stats::members_migrated) counts them). A hash holding a
//! member in both forms, elements without their count or a count without all its elements is
//! refused on load as [`Error::Malformed`](electric_core::Error::Malformed) naming the member.
//! Writers of the earlier layout must not run beside this one: they would write a split member
//! whole without removing its elements, which readers then refuse.

use std::borrow::Cow;

use electric_core::delta::Patch;
use electric_core::delta::PatchOperation;
use electric_core::{Key, SectionId};
use serde_json::Value;

/// Prefix of the field of a member held whole.
pub const MEMBER_PREFIX: &str = ".";
/// Prefix of the field holding the element count of an array member stored element by element
/// (`#name`).
pub const COUNT_PREFIX: &str = "#";
/// Prefix of an element cell (`*<index>.name`: element `index` of array member `name`).
pub const CELL_PREFIX: &str = "*";
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

/// Whether `value` is stored element by element: an array of at least two elements whose
/// first element is an object or an array (the elements are what changes; a small array, or
/// one of scalars, is stored whole, as one field is cheaper to read than many tiny ones).
pub fn split(value: &Value) -> Option<&[Value]> {
    match value {
        Value::Array(a) if a.len() >= 2 && matches!(a[0], Value::Object(_) | Value::Array(_)) => {
            Some(a)
        }
        _ => None,
    }
}

/// The elements of array member `name` (holding `value`) that `ops` change, when nothing else
/// about it changes: every operation on it lies inside one element, or replaces one element
/// whole. `None` when the member must be written whole: it is not split, an operation adds,
/// removes, moves or copies elements or the member itself, or names an index it lacks.
pub(crate) fn changed_cells(ops: &Patch, name: &str, value: &Value) -> Option<Vec<usize>> {
    let elements = split(value)?;
    let mut cells = Vec::new();
    for op in &ops.0 {
        let mut from = None;
        if let PatchOperation::Move(m) = op {
            from = Some(&m.from);
        }
        if let PatchOperation::Copy(c) = op {
            from = Some(&c.from);
        }
        if from.is_some_and(|f| f.first().is_some_and(|t| t.decoded() == name)) {
            return None;
        }
        let path = op.path();
        let mut tokens = path.tokens();
        if tokens.next().is_none_or(|t| t.decoded() != name) {
            continue;
        }
        let index: usize = tokens.next()?.decoded().parse().ok()?;
        let inside = tokens.next().is_some();
        let whole_element = matches!(op, PatchOperation::Replace(_));
        if index >= elements.len()
            || !(inside || whole_element)
            || matches!(op, PatchOperation::Move(_) | PatchOperation::Copy(_))
        {
            return None;
        }
        cells.push(index);
    }
    cells.sort_unstable();
    cells.dedup();
    Some(cells)
}

/// Appends the commit script's writes of member `name` holding `value`: `w name text` (whole),
/// `a name n text…` (split, every element) or, with `cells`, `c name n index text` per changed
/// element (split, the count unchanged).
pub(crate) fn push_member<'c>(
    args: &mut Vec<Cow<'c, str>>,
    name: &str,
    value: &Value,
    cells: Option<Vec<usize>>,
) -> serde_json::Result<()> {
    let text = |v: &Value| serde_json::to_string(v).map(Cow::Owned);
    let Some(elements) = split(value) else {
        args.extend([
            Cow::Borrowed("w"),
            Cow::Owned(name.to_string()),
            text(value)?,
        ]);
        return Ok(());
    };
    let n: Cow<'c, str> = Cow::Owned(elements.len().to_string());
    match cells {
        Some(cells) => {
            for i in cells {
                args.extend([
                    Cow::Borrowed("c"),
                    Cow::Owned(name.to_string()),
                    n.clone(),
                    Cow::Owned(i.to_string()),
                    text(&elements[i])?,
                ]);
            }
        }
        None => {
            args.extend([Cow::Borrowed("a"), Cow::Owned(name.to_string()), n]);
            for e in elements {
                args.push(text(e)?);
            }
        }
    }
    Ok(())
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
