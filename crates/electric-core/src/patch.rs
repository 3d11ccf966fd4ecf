//! JSON Patch (RFC 6902): diff, apply and size accounting.
//!
//! - [`diff`] computes a patch turning one document into another. It is hand-written for speed
//!   (it runs on every commit) and only emits `add`, `remove` and `replace` operations:
//!   - objects are compared key by key in one merge walk over both (sorted) maps;
//!   - arrays are compared position by position: common positions are diffed recursively, new
//!     tail elements are `add`ed in ascending index order and dropped tail elements are
//!     `remove`d from the highest index down, so every emitted index is valid when applied;
//!   - a value whose JSON type changed (or a changed scalar) is `replace`d as a whole, the root
//!     included (path `""`).
//!
//!   No pointer string is built for unchanged subtrees: the walk keeps a chain of borrowed path
//!   segments on the stack and renders (and escapes, `~` → `~0`, `/` → `~1`) a path only when it
//!   emits an operation.
//! - [`apply`] applies a patch atomically: on error the document is left exactly as it was. A
//!   patch of `replace` operations only (what [`diff`] emits for changed leaves) is applied
//!   here, resolving pointers without allocating; anything else, and any failure, goes to
//!   [`json_patch`].
//! - [`patch_size`] and [`json_size`] give serialized sizes without building the JSON text; the
//!   manager uses them to choose between sending a patch and sending a snapshot.

mod diff_ser;
mod finite;

use std::io;
use std::sync::OnceLock;

use json_patch::jsonptr::{Pointer, PointerBuf, Token};
use json_patch::{AddOperation, PatchOperation, RemoveOperation, ReplaceOperation};
use serde::Serialize;
use serde_json::{Map, Value};

pub(crate) use diff_ser::{diff_into, DiffError, OpLog};
pub(crate) use finite::{find as find_non_finite, NonFinite};

use crate::delta::Patch;
use crate::error::{Error, Result};

/// Computes a patch turning `old` into `new`.
///
/// The patch holds only `add`, `remove` and `replace` operations and is empty when the
/// documents are equal. Applying it to `old` (see [`apply`]) yields a document equal to `new`.
/// Arrays are diffed by position (no move detection), so inserting at the front of an array
/// yields one `replace` per shifted element plus an `add` at the end.
pub fn diff(old: &Value, new: &Value) -> Patch {
    let mut ops = Vec::new();
    if !std::ptr::eq(old, new) {
        diff_value(old, new, None, &mut ops);
    }
    Patch(ops)
}

/// Applies `ops` to `doc`, all or nothing.
///
/// # Errors
///
/// [`Error::PatchFailed`] when an operation does not apply (a path that does not resolve, an
/// array index out of range, a failed `test`, a `move` into its own child…). `doc` is then left
/// unchanged.
pub fn apply(doc: &mut Value, ops: &Patch) -> Result<()> {
    apply_inner(doc, ops, false).map(|_| ())
}

/// [`apply`], also returning how much the patch changed `doc`'s compact JSON length and, for a
/// patch of `replace` operations, the values it replaced (in operation order, for the caller's
/// digest). A patch of `replace` operations is sized exactly as it is applied, from the values
/// it swaps, so no path is resolved twice; any other patch gets [`size_change`]'s estimate and
/// no replaced values.
pub(crate) fn apply_sized(doc: &mut Value, ops: &Patch) -> Result<(i64, Option<Vec<Value>>)> {
    apply_inner(doc, ops, true)
}

fn apply_inner(doc: &mut Value, ops: &Patch, sized: bool) -> Result<(i64, Option<Vec<Value>>)> {
    let failed = |e: json_patch::PatchError| Error::PatchFailed {
        reason: e.to_string(),
    };
    if ops
        .iter()
        .all(|op| matches!(op, PatchOperation::Replace(_)))
    {
        if let Some((change, olds)) = replace_all(doc, ops, sized) {
            return Ok((change, Some(olds)));
        }
    }
    let change = if sized { size_change(doc, ops) } else { 0 };
    if ops.iter().any(|op| matches!(op, PatchOperation::Move(_))) {
        // `json_patch::patch` cannot roll back every failed `move` (json-patch 5.0):
        // - a `move` whose `from` resolves but whose `path` does not has already removed the
        //   value when it fails, and that removal is never undone (the value is lost);
        // - undoing a `move` from a location to one of its ancestors is itself an invalid move,
        //   and `json_patch::patch` panics.
        // Patches with moves (never produced by `diff`) therefore run on a copy.
        let mut scratch = doc.clone();
        json_patch::patch_unsafe(&mut scratch, ops).map_err(failed)?;
        *doc = scratch;
        return Ok((change, None));
    }
    // Rolls `doc` back on error.
    json_patch::patch(doc, ops).map_err(failed)?;
    Ok((change, None))
}

/// Applies a patch of `replace` operations only (the common case: a diff of changed leaves)
/// without `json_patch`'s string allocation per pointer token, and with `sized`, returns the
/// change in JSON length (each new value counted in, each replaced one out), with the replaced
/// values. Returns `None`, with `doc` rolled back, when a path does not resolve; `json_patch`
/// then fails the same way and reports it.
fn replace_all(doc: &mut Value, ops: &Patch, sized: bool) -> Option<(i64, Vec<Value>)> {
    let size = |v: &Value| if sized { serialized_len(v) as i64 } else { 0 };
    let mut undo = Vec::with_capacity(ops.len());
    let mut change = 0;
    for op in ops.iter() {
        let PatchOperation::Replace(r) = op else {
            break;
        };
        match resolve_mut(doc, &r.path) {
            Some(slot) => {
                change += size(&r.value) - size(slot);
                undo.push(std::mem::replace(slot, r.value.clone()));
            }
            None => break,
        }
    }
    if undo.len() == ops.len() {
        return Some((change, undo));
    }
    // Undone newest first, each path resolves as it did right after its operation.
    for (op, old) in ops.iter().zip(undo).rev() {
        if let Some(slot) = resolve_mut(doc, op.path()) {
            *slot = old;
        }
    }
    None
}

/// `path` in `doc`, resolved as [`Value::pointer`] does but without allocating a string per
/// token (a token is decoded only when it holds an escape).
fn resolve<'a>(doc: &'a Value, path: &Pointer) -> Option<&'a Value> {
    path.tokens().try_fold(doc, |v, t| match v {
        Value::Object(m) => m.get(t.decoded().as_ref()),
        Value::Array(a) => array_index(t.encoded()).and_then(|i| a.get(i)),
        _ => None,
    })
}

/// [`resolve`] for a mutable document.
fn resolve_mut<'a>(doc: &'a mut Value, path: &Pointer) -> Option<&'a mut Value> {
    path.tokens().try_fold(doc, |v, t| match v {
        Value::Object(m) => m.get_mut(t.decoded().as_ref()),
        Value::Array(a) => array_index(t.encoded()).and_then(|i| a.get_mut(i)),
        _ => None,
    })
}

/// An array index token as RFC 6901 (and `serde_json`) read it: decimal digits, no sign, no
/// leading zero.
fn array_index(s: &str) -> Option<usize> {
    if s.starts_with('+') || (s.starts_with('0') && s.len() != 1) {
        return None;
    }
    s.parse().ok()
}

/// The length in bytes of `ops` serialized as compact JSON (as in a delta's `ops` field).
///
/// Nothing is allocated: the serializer writes into a byte counter.
pub fn patch_size(ops: &Patch) -> usize {
    serialized_len(ops)
}

/// About how much applying `ops` to `doc` changes its compact JSON length, in bytes, judged from
/// `doc` before the patch: each value written counts in full, each value replaced or removed
/// counts out, and a new member adds its quoted name, colon and comma (a new element its comma).
/// Cheap for patches of small values (it sizes only what the operations touch); an estimate for
/// weighing, not for limits (escapes and sequences of operations on one path are approximate).
pub(crate) fn size_change(doc: &Value, ops: &Patch) -> i64 {
    let size = |v: &Value| serialized_len(v) as i64;
    let at = |path: &Pointer| resolve(doc, path);
    let in_array = |path: &Pointer| {
        path.parent()
            .and_then(|p| resolve(doc, p))
            .is_some_and(Value::is_array)
    };
    let slot = |path: &Pointer| {
        if in_array(path) {
            1
        } else {
            path.last()
                .map_or(0, |t| serialized_len(t.decoded().as_ref()) as i64 + 2)
        }
    };
    ops.iter()
        .map(|op| match op {
            PatchOperation::Add(o) if o.path.is_root() => size(&o.value) - size(doc),
            // Adding into an array inserts; adding an existing member replaces it.
            PatchOperation::Add(o) => match at(&o.path) {
                Some(old) if !in_array(&o.path) => size(&o.value) - size(old),
                _ => size(&o.value) + slot(&o.path),
            },
            PatchOperation::Replace(o) => size(&o.value) - at(&o.path).map_or(0, size),
            PatchOperation::Remove(o) => -(at(&o.path).map_or(0, size) + slot(&o.path)),
            PatchOperation::Copy(o) => at(&o.from).map_or(0, size) + slot(&o.path),
            PatchOperation::Move(_) | PatchOperation::Test(_) => 0,
        })
        .sum()
}

/// The length in bytes of `v` serialized as compact JSON.
///
/// Nothing is allocated: the serializer writes into a byte counter.
pub fn json_size(v: &Value) -> usize {
    serialized_len(v)
}

/// The length in bytes of the object `m` serialized as compact JSON (nothing is allocated).
pub(crate) fn map_json_size(m: &Map<String, Value>) -> usize {
    serialized_len(m)
}

fn serialized_len<T: Serialize + ?Sized>(v: &T) -> usize {
    let mut counter = ByteCounter(0);
    // Neither a `Value` nor a `Patch` can fail to serialize (all map keys are strings), and the
    // counter never fails to write, so the result carries no information.
    let _ = serde_json::to_writer(&mut counter, v);
    counter.0
}

/// An [`io::Write`] that only counts the bytes written to it.
struct ByteCounter(usize);

impl io::Write for ByteCounter {
    #[inline]
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    #[inline]
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.0 += buf.len();
        Ok(())
    }

    #[inline]
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// diff
// ---------------------------------------------------------------------------------------------

/// One step of a path, borrowed from the documents being diffed.
#[derive(Clone, Copy)]
enum Seg<'a> {
    /// An object member (unescaped).
    Key(&'a str),
    /// An array element.
    Index(usize),
}

/// A non-root path: a chain of segments living on the diff's call stack, leaf first.
///
/// `None` stands for the root.
struct Path<'p, 'a> {
    parent: Option<&'p Path<'p, 'a>>,
    seg: Seg<'a>,
}

/// Diffs two values at `path`.
///
/// Containers of the same kind are walked; anything else is compared shallowly and replaced
/// as a whole when it differs.
#[inline(always)]
fn diff_value<'a>(
    old: &'a Value,
    new: &'a Value,
    path: Option<&Path<'_, 'a>>,
    ops: &mut Vec<PatchOperation>,
) {
    match (old, new) {
        (Value::Object(o), Value::Object(n)) => diff_object(o, n, path, ops),
        (Value::Array(o), Value::Array(n)) => diff_array(o, n, path, ops),
        _ => {
            if !scalar_eq(old, new) {
                ops.push(PatchOperation::Replace(ReplaceOperation {
                    path: render(path),
                    value: new.clone(),
                }));
            }
        }
    }
}

/// Equality of two values that are not both objects or both arrays (any such pair of
/// different kinds is unequal).
#[inline(always)]
fn scalar_eq(old: &Value, new: &Value) -> bool {
    match (old, new) {
        (Value::Null, Value::Null) => true,
        (Value::Bool(o), Value::Bool(n)) => o == n,
        (Value::Number(o), Value::Number(n)) => o == n,
        (Value::String(o), Value::String(n)) => str_eq(o, n),
        _ => false,
    }
}

/// String equality tuned for the short keys and values of typical documents: a length check
/// and at most two overlapping word compares, without calling into `memcmp`.
#[inline(always)]
fn str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let len = a.len();
    if len != b.len() {
        return false;
    }
    if len > 16 {
        return a == b;
    }
    if len >= 8 {
        return load8(a, 0) == load8(b, 0) && load8(a, len - 8) == load8(b, len - 8);
    }
    if len >= 4 {
        return load4(a, 0) == load4(b, 0) && load4(a, len - 4) == load4(b, len - 4);
    }
    a.iter().zip(b).all(|(x, y)| x == y)
}

#[inline(always)]
fn load8(s: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&s[at..at + 8]);
    u64::from_ne_bytes(w)
}

#[inline(always)]
fn load4(s: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&s[at..at + 4]);
    u32::from_ne_bytes(w)
}

fn diff_object<'a>(
    old: &'a Map<String, Value>,
    new: &'a Map<String, Value>,
    path: Option<&Path<'_, 'a>>,
    ops: &mut Vec<PatchOperation>,
) {
    if std::ptr::eq(old, new) {
        return;
    }
    if !maps_are_sorted() {
        return diff_object_by_lookup(old, new, path, ops);
    }
    // Both maps iterate in ascending key order: walk them together.
    let mut old_it = old.iter();
    let mut new_it = new.iter();
    let mut o = old_it.next();
    let mut n = new_it.next();
    // Fast path while both maps hold the same keys (the usual case).
    while let (Some((ok, ov)), Some((nk, nv))) = (o, n) {
        if !str_eq(ok, nk) {
            break;
        }
        let child = Path {
            parent: path,
            seg: Seg::Key(ok),
        };
        diff_value(ov, nv, Some(&child), ops);
        o = old_it.next();
        n = new_it.next();
    }
    loop {
        match (o, n) {
            (Some((ok, ov)), Some((nk, nv))) => {
                if str_eq(ok, nk) {
                    let child = Path {
                        parent: path,
                        seg: Seg::Key(ok),
                    };
                    diff_value(ov, nv, Some(&child), ops);
                    o = old_it.next();
                    n = new_it.next();
                } else if ok.as_bytes() < nk.as_bytes() {
                    push_remove(path, Seg::Key(ok), ops);
                    o = old_it.next();
                } else {
                    push_add(path, Seg::Key(nk), nv, ops);
                    n = new_it.next();
                }
            }
            (Some((ok, _)), None) => {
                push_remove(path, Seg::Key(ok), ops);
                o = old_it.next();
            }
            (None, Some((nk, nv))) => {
                push_add(path, Seg::Key(nk), nv, ops);
                n = new_it.next();
            }
            (None, None) => return,
        }
    }
}

/// The object diff for maps that do not iterate in key order (serde_json's `preserve_order`
/// feature switched on by some other crate in the build).
fn diff_object_by_lookup<'a>(
    old: &'a Map<String, Value>,
    new: &'a Map<String, Value>,
    path: Option<&Path<'_, 'a>>,
    ops: &mut Vec<PatchOperation>,
) {
    for (ok, ov) in old {
        match new.get(ok) {
            Some(nv) => {
                let child = Path {
                    parent: path,
                    seg: Seg::Key(ok),
                };
                diff_value(ov, nv, Some(&child), ops);
            }
            None => push_remove(path, Seg::Key(ok), ops),
        }
    }
    for (nk, nv) in new {
        if !old.contains_key(nk) {
            push_add(path, Seg::Key(nk), nv, ops);
        }
    }
}

/// Whether [`Map`] iterates in ascending key order (true unless serde_json's `preserve_order`
/// feature is on). Checked once, at run time, so that a feature switched on elsewhere in the
/// build cannot silently break [`diff`].
fn maps_are_sorted() -> bool {
    static SORTED: OnceLock<bool> = OnceLock::new();
    *SORTED.get_or_init(|| {
        let mut m = Map::new();
        m.insert("b".to_owned(), Value::Null);
        m.insert("a".to_owned(), Value::Null);
        m.keys().map(String::as_str).eq(["a", "b"])
    })
}

fn diff_array<'a>(
    old: &'a [Value],
    new: &'a [Value],
    path: Option<&Path<'_, 'a>>,
    ops: &mut Vec<PatchOperation>,
) {
    if std::ptr::eq(old, new) {
        return;
    }
    let common = old.len().min(new.len());
    for (i, (ov, nv)) in old.iter().zip(new).enumerate() {
        let child = Path {
            parent: path,
            seg: Seg::Index(i),
        };
        diff_value(ov, nv, Some(&child), ops);
    }
    // Grown: append in ascending order, each index equal to the length at that point.
    for (i, nv) in new.iter().enumerate().skip(common) {
        push_add(path, Seg::Index(i), nv, ops);
    }
    // Shrunk: drop the tail from the highest index down, so every index stays valid.
    for i in (common..old.len()).rev() {
        push_remove(path, Seg::Index(i), ops);
    }
}

fn push_add(
    parent: Option<&Path<'_, '_>>,
    seg: Seg<'_>,
    value: &Value,
    ops: &mut Vec<PatchOperation>,
) {
    let child = Path { parent, seg };
    ops.push(PatchOperation::Add(AddOperation {
        path: render(Some(&child)),
        value: value.clone(),
    }));
}

fn push_remove(parent: Option<&Path<'_, '_>>, seg: Seg<'_>, ops: &mut Vec<PatchOperation>) {
    let child = Path { parent, seg };
    ops.push(PatchOperation::Remove(RemoveOperation {
        path: render(Some(&child)),
    }));
}

// ---------------------------------------------------------------------------------------------
// Rendering paths
// ---------------------------------------------------------------------------------------------

/// Renders `path` as an RFC 6901 pointer, allocating exactly once.
fn render(path: Option<&Path<'_, '_>>) -> PointerBuf {
    let Some(path) = path else {
        return PointerBuf::root();
    };
    let mut len = 0;
    let mut cur = Some(path);
    while let Some(p) = cur {
        len += 1 + encoded_len(p.seg);
        cur = p.parent;
    }
    let mut s = String::with_capacity(len);
    write_path(path, &mut s);
    debug_assert_eq!(s.len(), len);
    // The string is well formed by construction, so the check (one pass over its bytes, no
    // allocation) always passes; the fallback only exists to avoid a panic path.
    PointerBuf::try_from(s).unwrap_or_else(|_| slow_render(path))
}

fn write_path(path: &Path<'_, '_>, out: &mut String) {
    if let Some(parent) = path.parent {
        write_path(parent, out);
    }
    out.push('/');
    match path.seg {
        Seg::Key(k) => write_escaped(k, out),
        Seg::Index(i) => write_index(i, out),
    }
}

/// Appends `key` with `~` escaped as `~0` and `/` as `~1`.
fn write_escaped(key: &str, out: &mut String) {
    if !needs_escape(key) {
        out.push_str(key);
        return;
    }
    let mut rest = key;
    while let Some(at) = rest.find(['~', '/']) {
        out.push_str(&rest[..at]);
        out.push_str(if rest.as_bytes()[at] == b'~' {
            "~0"
        } else {
            "~1"
        });
        rest = &rest[at + 1..];
    }
    out.push_str(rest);
}

fn write_index(mut i: usize, out: &mut String) {
    let mut buf = [0u8; 20];
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (i % 10) as u8;
        i /= 10;
        if i == 0 {
            break;
        }
    }
    for &b in &buf[at..] {
        out.push(char::from(b));
    }
}

#[inline]
fn needs_escape(key: &str) -> bool {
    key.bytes().any(|b| b == b'~' || b == b'/')
}

fn encoded_len(seg: Seg<'_>) -> usize {
    match seg {
        Seg::Key(k) => {
            if needs_escape(k) {
                k.len() + k.bytes().filter(|&b| b == b'~' || b == b'/').count()
            } else {
                k.len()
            }
        }
        Seg::Index(mut i) => {
            let mut n = 1;
            while i >= 10 {
                i /= 10;
                n += 1;
            }
            n
        }
    }
}

/// Renders `path` with jsonptr's own token encoding (not expected to ever run).
fn slow_render(path: &Path<'_, '_>) -> PointerBuf {
    let mut segs = Vec::new();
    let mut cur = Some(path);
    while let Some(p) = cur {
        segs.push(p.seg);
        cur = p.parent;
    }
    PointerBuf::from_tokens(segs.into_iter().rev().map(|seg| match seg {
        Seg::Key(k) => Token::new(k),
        Seg::Index(i) => Token::from(i),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ops(v: Value) -> Patch {
        serde_json::from_value(v).expect("valid patch")
    }

    #[test]
    fn size_change_follows_the_document() {
        let len = |v: &Value| serde_json::to_string(v).unwrap().len() as i64;
        let doc = json!({"a": 1, "b": {"c": "xyz", "d": [1, 2, 3]}, "e": [true]});
        for new in [
            json!({"a": 12345, "b": {"c": "xyz", "d": [1, 2, 3]}, "e": [true]}),
            json!({"a": 1.25, "b": {"c": "xyz", "d": [1, "two", 3]}, "e": [false]}),
            json!({"a": 1, "b": {"c": "a much longer string", "d": [1, 2, 3]}, "e": [true]}),
            json!({"a": 1, "b": {"c": "xyz", "d": [1, 2, 3]}, "e": [true], "f": {"g": [1]}}),
            json!({"a": 1, "b": {"d": [1, 2, 3]}, "e": [true]}),
            json!({"a": 1, "b": {"c": "xyz", "d": [1, 2]}, "e": [true]}),
            json!({"a": 1, "b": {"c": "xyz", "d": [1, 2, 3, 4, 5]}, "e": [true]}),
            json!({"a": 1, "b": {"c": "xyz", "d": []}, "e": []}),
            json!({"z": "everything replaced"}),
        ] {
            let p = diff(&doc, &new);
            let estimate = len(&doc) + size_change(&doc, &p);
            assert!(
                (estimate - len(&new)).abs() <= p.0.len() as i64,
                "{new}: estimated {estimate}, actual {}",
                len(&new)
            );
            // Sizing while applying agrees, and is exact for patches of replaces.
            let mut applied = doc.clone();
            let (change, olds) = apply_sized(&mut applied, &p).unwrap();
            assert_eq!(applied, new);
            if p.iter().all(|op| matches!(op, PatchOperation::Replace(_))) {
                assert_eq!(len(&doc) + change, len(&new), "{new}");
                // The replaced values come back, in order: the digest follows from them.
                let olds = olds.expect("replaced values");
                let (before, after) = (doc.as_object().unwrap(), new.as_object().unwrap());
                assert_eq!(
                    crate::digest::Digest::of(before).after(&p, olds.iter().map(Some)),
                    Some(crate::digest::Digest::of(after))
                );
            } else {
                assert!(olds.is_none());
                assert_eq!(change, size_change(&doc, &p), "{new}");
            }
        }
        // A patch that fails changes nothing and reports the failure, sized or not.
        let bad = ops(json!([
            {"op": "replace", "path": "/a", "value": 2},
            {"op": "replace", "path": "/nope/x", "value": 3}
        ]));
        let mut unchanged = doc.clone();
        assert!(apply_sized(&mut unchanged, &bad).is_err());
        assert_eq!(unchanged, doc);
        // A move is sized by the estimate (as nothing) and applied on a copy.
        let mv = ops(json!([{"op": "move", "from": "/a", "path": "/z"}]));
        let mut moved = doc.clone();
        assert_eq!(
            apply_sized(&mut moved, &mv).unwrap().0,
            size_change(&doc, &mv)
        );
        assert_eq!(moved["z"], json!(1));
        let bad_move = ops(json!([{"op": "move", "from": "/a", "path": "/nope/z"}]));
        let mut unchanged = doc.clone();
        assert!(apply_sized(&mut unchanged, &bad_move).is_err());
        assert_eq!(unchanged, doc);
        // Inserting into an array at an existing index is an insert, not a replace.
        let insert = ops(json!([{"op": "add", "path": "/b/d/0", "value": 10}]));
        let mut after = doc.clone();
        apply(&mut after, &insert).unwrap();
        assert_eq!(len(&doc) + size_change(&doc, &insert), len(&after));
        // Replacing the root counts the new document exactly.
        let root = ops(json!([{"op": "replace", "path": "", "value": {"k": "v"}}]));
        assert_eq!(
            len(&doc) + size_change(&doc, &root),
            len(&json!({"k": "v"}))
        );
    }

    /// Diffs, checks the round trip, and returns the patch as JSON.
    fn check(old: Value, new: Value) -> Value {
        let p = diff(&old, &new);
        let mut doc = old.clone();
        apply(&mut doc, &p).expect("diff applies");
        assert_eq!(doc, new, "patch {p}");
        assert!(diff(&new, &new).is_empty());
        assert!(diff(&old, &old.clone()).is_empty());
        serde_json::to_value(&p).expect("serializes")
    }

    #[test]
    fn equal_documents_give_an_empty_patch() {
        let v = json!({"a": [1, {"b": null}], "c": "x", "": {"~/": 1.5}});
        assert!(diff(&v, &v).is_empty());
        assert!(diff(&v, &v.clone()).is_empty());
        assert!(diff(&Value::Null, &Value::Null).is_empty());
    }

    #[test]
    fn nested_objects() {
        let p = check(
            json!({"a": {"b": {"c": 1, "d": 2}, "keep": true}, "gone": 1}),
            json!({"a": {"b": {"c": 3, "e": 4}, "keep": true}, "new": [1]}),
        );
        assert_eq!(
            p,
            json!([
                {"op": "replace", "path": "/a/b/c", "value": 3},
                {"op": "remove", "path": "/a/b/d"},
                {"op": "add", "path": "/a/b/e", "value": 4},
                {"op": "remove", "path": "/gone"},
                {"op": "add", "path": "/new", "value": [1]},
            ])
        );
    }

    #[test]
    fn arrays_grow_and_shrink() {
        let p = check(json!({"a": [1, 2]}), json!({"a": [1, 5, 6, 7]}));
        assert_eq!(
            p,
            json!([
                {"op": "replace", "path": "/a/1", "value": 5},
                {"op": "add", "path": "/a/2", "value": 6},
                {"op": "add", "path": "/a/3", "value": 7},
            ])
        );
        let p = check(json!({"a": [1, 2, 3, 4]}), json!({"a": [0]}));
        assert_eq!(
            p,
            json!([
                {"op": "replace", "path": "/a/0", "value": 0},
                {"op": "remove", "path": "/a/3"},
                {"op": "remove", "path": "/a/2"},
                {"op": "remove", "path": "/a/1"},
            ])
        );
        check(json!([]), json!([1, [2], {"x": 3}]));
        check(json!([1, [2], {"x": 3}]), json!([]));
        check(json!([[1, 2, 3], [4]]), json!([[1], [4, 5, 6]]));
        let long: Vec<i32> = (0..1234).collect();
        let p = check(json!({ "l": long }), json!({"l": [0]}));
        assert_eq!(p[0], json!({"op": "remove", "path": "/l/1233"}));
        assert_eq!(p.as_array().map(Vec::len), Some(1233));
    }

    #[test]
    fn type_changes() {
        check(json!({"a": {"b": 1}}), json!({"a": [1]}));
        check(json!({"a": [1]}), json!({"a": {"0": 1}}));
        check(json!({"a": 1}), json!({"a": {"b": 1}}));
        check(json!({"a": "1"}), json!({"a": 1}));
        check(json!({"a": 1}), json!({"a": 1.0}));
        check(json!({"a": null}), json!({"a": false}));
        check(json!({"a": false}), json!({"a": true}));
        check(json!([{"a": 1}]), json!([[{"a": 1}]]));
    }

    #[test]
    fn root_replacement() {
        for (old, new) in [
            (json!({"a": 1}), json!([1])),
            (json!([1]), json!({"a": 1})),
            (json!(1), json!({"a": 1})),
            (json!({"a": 1}), json!(null)),
            (json!("x"), json!("y")),
        ] {
            let p = check(old, new.clone());
            assert_eq!(p, json!([{"op": "replace", "path": "", "value": new}]));
        }
    }

    #[test]
    fn keys_are_escaped() {
        let p = check(
            json!({"a/b": 1, "m~n": 2, "~1": 3, "/": {"~": 4}, "x": 0}),
            json!({"a/b": 9, "m~n": 8, "~1": 7, "/": {"~": 6}, "~/~/": 5}),
        );
        assert_eq!(
            p,
            json!([
                {"op": "replace", "path": "/~1/~0", "value": 6},
                {"op": "replace", "path": "/a~1b", "value": 9},
                {"op": "replace", "path": "/m~0n", "value": 8},
                {"op": "remove", "path": "/x"},
                {"op": "add", "path": "/~0~1~0~1", "value": 5},
                {"op": "replace", "path": "/~01", "value": 7},
            ])
        );
    }

    #[test]
    fn empty_and_unicode_keys() {
        let p = check(
            json!({"": 1, "é/ü": {"": [1]}, "日本": 1}),
            json!({"": 2, "é/ü": {"": [1, 2]}, "日本~": 1}),
        );
        assert_eq!(
            p,
            json!([
                {"op": "replace", "path": "/", "value": 2},
                {"op": "add", "path": "/é~1ü//1", "value": 2},
                {"op": "remove", "path": "/日本"},
                {"op": "add", "path": "/日本~0", "value": 1},
            ])
        );
        check(
            json!({"": {"": {"": 1}}}),
            json!({"": {"": {"": 2, "a": 3}}}),
        );
    }

    #[test]
    fn str_eq_agrees_with_std() {
        let base: String = "abcdefghijklmnopqrstuvwxyzé0123456789".into();
        for len in 0..base.len() {
            let Some(a) = base.get(..len) else { continue };
            let copy = String::from(a);
            assert!(str_eq(a, a) && str_eq(a, &copy));
            for (at, c) in a.char_indices() {
                let mut b = a.to_owned();
                let other = if c.is_ascii() { "#" } else { "ü" };
                b.replace_range(at..at + c.len_utf8(), other);
                assert_eq!(b.len(), a.len());
                assert!(!str_eq(a, &b), "{a:?} vs {b:?}");
            }
            if let Some(shorter) = base.get(..len.saturating_sub(1)) {
                assert_eq!(str_eq(a, shorter), a == shorter);
            }
        }
    }

    #[test]
    fn large_indices_render() {
        let mut s = String::new();
        for i in [0usize, 9, 10, 99, 100, 12345, usize::MAX] {
            s.clear();
            write_index(i, &mut s);
            assert_eq!(s, i.to_string());
            assert_eq!(encoded_len(Seg::Index(i)), s.len());
        }
    }

    #[test]
    fn lookup_fallback_agrees() {
        let old = json!({"a": 1, "b": {"c": [1, 2]}, "d": 0, "~": 1});
        let new = json!({"a": 2, "b": {"c": [1]}, "e": 0, "/": 1});
        let mut ops = Vec::new();
        if let (Value::Object(o), Value::Object(n)) = (&old, &new) {
            diff_object_by_lookup(o, n, None, &mut ops);
        }
        let mut doc = old.clone();
        apply(&mut doc, &Patch(ops)).expect("applies");
        assert_eq!(doc, new);
        assert!(maps_are_sorted(), "serde_json built without preserve_order");
    }

    #[test]
    fn pointers_resolve_like_serde_json_without_allocating() {
        let mut doc = json!({"a/b": {"~": [1, 2]}, "": {"0": 3}});
        for (path, want) in [
            ("", Some(doc.clone())),
            ("/a~1b/~0/1", Some(json!(2))),
            ("//0", Some(json!(3))),
            ("/a~1b/~0/01", None),
            ("/a~1b/~0/+1", None),
            ("/a~1b/~0/-", None),
            ("/a~1b/~0/2", None),
            ("/a/b", None),
            ("/a~1b/~0/1/x", None),
        ] {
            let ptr = Pointer::parse(path).expect("valid pointer");
            assert_eq!(resolve(&doc, ptr).cloned(), want, "{path}");
            assert_eq!(doc.pointer(path).cloned(), want, "serde_json on {path}");
            let mut copy = doc.clone();
            assert_eq!(
                resolve_mut(&mut copy, ptr).map(|v| v.clone()),
                want,
                "{path}"
            );
        }
        *resolve_mut(&mut doc, Pointer::parse("/a~1b/~0/0").expect("valid")).expect("resolves") =
            json!("x");
        assert_eq!(doc["a/b"]["~"][0], "x");
    }

    #[test]
    fn apply_failure_leaves_doc_unchanged() {
        let orig = json!({"a": {"b": [1, 2]}, "c": 1});
        let mut doc = orig.clone();
        let err = apply(
            &mut doc,
            &ops(json!([
                {"op": "remove", "path": "/c"},
                {"op": "add", "path": "/a/b/-", "value": 3},
                {"op": "replace", "path": "/a/b/0", "value": 9},
                {"op": "remove", "path": "/nope"},
            ])),
        )
        .expect_err("must fail");
        assert!(matches!(err, Error::PatchFailed { .. }), "{err}");
        assert_eq!(doc, orig);
    }

    #[test]
    fn apply_failure_after_move_to_ancestor_leaves_doc_unchanged() {
        // json_patch::patch itself panics here while undoing the move.
        let orig = json!({"a": {"b": {"c": 1}}, "x": 1});
        for target in ["/a", ""] {
            let mut doc = orig.clone();
            let err = apply(
                &mut doc,
                &ops(json!([
                    {"op": "move", "from": "/a/b", "path": target},
                    {"op": "test", "path": "/x", "value": 2},
                ])),
            )
            .expect_err("must fail");
            assert!(matches!(err, Error::PatchFailed { .. }), "{err}");
            assert_eq!(doc, orig);
        }
        let mut doc = orig.clone();
        apply(
            &mut doc,
            &ops(json!([{"op": "move", "from": "/a/b", "path": "/a"}])),
        )
        .expect("applies");
        assert_eq!(doc, json!({"a": {"c": 1}, "x": 1}));
    }

    #[test]
    fn apply_failure_of_a_move_to_a_bad_path_keeps_the_value() {
        // json_patch::patch removes `from`, fails to add at `path` and never puts it back.
        let orig = json!({"a": [1, 2], "b": null});
        let mut doc = orig.clone();
        let err = apply(
            &mut doc,
            &ops(json!([{"op": "move", "from": "/a", "path": "/b/c"}])),
        )
        .expect_err("must fail");
        assert!(matches!(err, Error::PatchFailed { .. }), "{err}");
        assert_eq!(doc, orig);
    }

    #[test]
    fn sizes_match_serialization() {
        let v = json!({"a": [1, 2.5, "x\"y\n\u{1}é"], "b": null, "c": {"~/": true}});
        assert_eq!(
            json_size(&v),
            serde_json::to_vec(&v).map(|b| b.len()).unwrap_or(0)
        );
        let p = diff(&v, &json!({"a": [1], "c": {"~/": false}, "d": "日本"}));
        assert_eq!(
            patch_size(&p),
            serde_json::to_vec(&p).map(|b| b.len()).unwrap_or(0)
        );
        assert_eq!(patch_size(&Patch::default()), 2);
        assert_eq!(json_size(&Value::Null), 4);
    }
}
