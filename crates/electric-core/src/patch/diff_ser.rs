//! [`diff_into`]: serializes a value against the JSON tree of its previous version, updating the
//! tree in place and emitting the patch between them, without building a second tree.
//!
//! It yields what [`super::diff`] yields for `(tree, serde_json::to_value(value))` and leaves
//! the tree equal to `serde_json::to_value(value)`, at a fraction of the cost: unchanged leaves
//! are compared where they lie (a string is compared, not allocated), and neither the new tree
//! nor the old one has to be built or dropped. Operations come in the order the value
//! serializes its members rather than sorted, which applies the same (different members never
//! share a path; array operations keep `diff`'s order).
//!
//! Anything unusual — a map key that is not a string, one of serde_json's private types (a
//! `RawValue`, an `arbitrary_precision` number), a root that is not an object or is replaced
//! whole (a top-level enum), a `Serialize` error — gives up with an error; the tree is then in
//! an unspecified state and the caller must rebuild it the slow way (which also reports the
//! real error). A NaN or an infinity, which JSON cannot hold (`serde_json` would write `null`),
//! stops it with [`DiffError::NonFinite`] naming where it is.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use serde::ser::{self, Serialize};
use serde_json::{Map, Value};

use super::finite::{self, NonFinite};
use super::{render, scalar_eq, Path, Seg};
use json_patch::{AddOperation, PatchOperation, RemoveOperation, ReplaceOperation};

type Error = DiffError;

/// Why [`diff_into`] stopped.
#[derive(Debug)]
pub(crate) enum DiffError {
    /// The value holds a number JSON cannot represent.
    NonFinite(NonFinite),
    /// Something this serializer leaves to the slow path (see the module docs).
    GiveUp(String),
}

impl fmt::Display for DiffError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DiffError::NonFinite(n) => write!(f, "{} at {:?}", n.value, n.path),
            DiffError::GiveUp(why) => write!(f, "diff_into gives up: {why}"),
        }
    }
}

impl std::error::Error for DiffError {}

impl ser::Error for DiffError {
    fn custom<M: fmt::Display>(msg: M) -> Self {
        DiffError::GiveUp(msg.to_string())
    }
}

impl From<serde_json::Error> for DiffError {
    fn from(e: serde_json::Error) -> Self {
        DiffError::GiveUp(e.to_string())
    }
}

/// `value` built whole as the new value at `path`, refusing a NaN or an infinity inside it.
fn build<T: Serialize + ?Sized>(value: &T, path: Option<&Path<'_, '_>>) -> Result<Value, Error> {
    if let Some(mut found) = finite::find(value) {
        found.path = format!("{}{}", render(path), found.path);
        return Err(DiffError::NonFinite(found));
    }
    Ok(serde_json::to_value(value)?)
}

/// The prefix of the names of the structs `serde_json` serializes its own special values as
/// (`$serde_json::private::RawValue`, and `$serde_json::private::Number` when its
/// `arbitrary_precision` feature is on).
const SERDE_JSON_PRIVATE: &str = "$serde_json::private::";

/// The operations [`diff_into`] emits, each with the value it replaced or removed (`None` for an
/// `add`), so the caller can update the document's digest without the old tree.
#[derive(Debug, Default)]
pub(crate) struct OpLog {
    /// The patch, in the order the value serialized.
    pub ops: Vec<PatchOperation>,
    /// For each operation, what was at its path before.
    pub olds: Vec<Option<Value>>,
}

impl OpLog {
    fn push(&mut self, op: PatchOperation, old: Option<Value>) {
        self.ops.push(op);
        self.olds.push(old);
    }
}

/// Serializes `value` into `tree` (the previous version's JSON object), pushing the operations
/// that turn the old tree into the new one onto `ops`.
///
/// # Errors
///
/// Gives up (see the module docs); `tree` must then be discarded.
pub(crate) fn diff_into<T: Serialize + ?Sized>(
    tree: &mut Map<String, Value>,
    value: &T,
    ops: &mut OpLog,
) -> Result<(), Error> {
    let start = ops.ops.len();
    let mut root = Value::Object(std::mem::take(tree));
    value.serialize(DiffSer {
        slot: &mut root,
        path: None,
        ops,
    })?;
    // A root replaced whole (an enum at the top level, say) names no member, and the caller
    // learns removed members from the operations' paths: leave that to `diff`, which never
    // replaces an object's root.
    if ops.ops[start..].iter().any(|op| op.path().is_root()) {
        return Err(give_up("the root was replaced"));
    }
    match root {
        Value::Object(map) => {
            *tree = map;
            Ok(())
        }
        _ => Err(give_up("the root is not an object")),
    }
}

fn give_up(why: &str) -> Error {
    DiffError::GiveUp(why.to_string())
}

/// Serializes one value against `slot`.
struct DiffSer<'s, 'p, 'a> {
    slot: &'s mut Value,
    path: Option<&'p Path<'p, 'a>>,
    ops: &'s mut OpLog,
}

impl<'s, 'p, 'a> DiffSer<'s, 'p, 'a> {
    /// The new value at this slot is `new` (a scalar or a value built whole).
    fn set(self, new: Value) -> Result<(), Error> {
        let equal = match (&*self.slot, &new) {
            (Value::Object(_), _) | (Value::Array(_), _) => *self.slot == new,
            (old, new) => scalar_eq(old, new),
        };
        if equal {
            return Ok(());
        }
        let old = std::mem::replace(self.slot, new.clone());
        self.ops.push(
            PatchOperation::Replace(ReplaceOperation {
                path: render(self.path),
                value: new,
            }),
            Some(old),
        );
        Ok(())
    }

    fn set_str(self, new: &str) -> Result<(), Error> {
        match &*self.slot {
            Value::String(old) if old == new => Ok(()),
            _ => self.set(Value::String(new.to_owned())),
        }
    }

    /// A container: walked when the slot holds one of the same kind, otherwise built whole.
    fn compound(self, want: Kind, wrap: Option<&'static str>) -> Compound<'s, 'p, 'a> {
        let DiffSer { slot, path, ops } = self;
        let fits = matches!(
            (&*slot, want),
            (Value::Array(_), Kind::Array) | (Value::Object(_), Kind::Object)
        );
        if wrap.is_none() && fits {
            return Compound::Walk {
                slot,
                path,
                ops,
                seen: Seen::default(),
                next: 0,
                key: None,
            };
        }
        Compound::Build {
            slot,
            path,
            ops,
            built: match want {
                Kind::Array => Value::Array(Vec::new()),
                Kind::Object => Value::Object(Map::new()),
            },
            wrap,
            key: None,
        }
    }
}

/// The distinct members written to an object so far: a list while few (struct fields, no
/// allocation), a set once many (large maps).
#[derive(Default)]
struct Seen {
    few: Vec<Cow<'static, str>>,
    many: Option<HashSet<Cow<'static, str>>>,
}

impl Seen {
    const FEW: usize = 32;

    /// Records `name`; `false` if it was there already.
    fn insert(&mut self, name: Cow<'static, str>) -> bool {
        if let Some(set) = &mut self.many {
            return set.insert(name);
        }
        if self.few.contains(&name) {
            return false;
        }
        self.few.push(name);
        if self.few.len() > Self::FEW {
            self.many = Some(self.few.drain(..).collect());
        }
        true
    }

    fn contains(&self, name: &str) -> bool {
        match &self.many {
            Some(set) => set.contains(name),
            None => self.few.iter().any(|n| n == name),
        }
    }

    fn len(&self) -> usize {
        self.many.as_ref().map_or(self.few.len(), HashSet::len)
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Array,
    Object,
}

/// The state of a sequence, map or struct being serialized.
enum Compound<'s, 'p, 'a> {
    /// The slot holds a container of the same kind: diff element by element.
    Walk {
        slot: &'s mut Value,
        path: Option<&'p Path<'p, 'a>>,
        ops: &'s mut OpLog,
        /// Object members written so far.
        seen: Seen,
        /// The next array index.
        next: usize,
        /// A map key waiting for its value.
        key: Option<String>,
    },
    /// Anything else: build the new value whole (wrapped in `{variant: …}` for enum variants)
    /// and replace the slot with it.
    Build {
        slot: &'s mut Value,
        path: Option<&'p Path<'p, 'a>>,
        ops: &'s mut OpLog,
        built: Value,
        wrap: Option<&'static str>,
        key: Option<String>,
    },
}

impl Compound<'_, '_, '_> {
    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        match self {
            Compound::Walk {
                slot: Value::Array(items),
                path,
                ops,
                next,
                ..
            } => {
                let i = *next;
                *next += 1;
                let child = Path {
                    parent: *path,
                    seg: Seg::Index(i),
                };
                if let Some(item) = items.get_mut(i) {
                    return value.serialize(DiffSer {
                        slot: item,
                        path: Some(&child),
                        ops,
                    });
                }
                let new = build(value, Some(&child))?;
                ops.push(
                    PatchOperation::Add(AddOperation {
                        path: render(Some(&child)),
                        value: new.clone(),
                    }),
                    None,
                );
                items.push(new);
                Ok(())
            }
            Compound::Build {
                built: Value::Array(items),
                path,
                wrap,
                ..
            } => {
                let variant;
                let parent = match wrap {
                    Some(v) => {
                        variant = Path {
                            parent: *path,
                            seg: Seg::Key(v),
                        };
                        Some(&variant)
                    }
                    None => *path,
                };
                let child = Path {
                    parent,
                    seg: Seg::Index(items.len()),
                };
                items.push(build(value, Some(&child))?);
                Ok(())
            }
            _ => Err(give_up("an element outside an array")),
        }
    }

    fn member<T: Serialize + ?Sized>(
        &mut self,
        name: Cow<'static, str>,
        value: &T,
    ) -> Result<(), Error> {
        match self {
            Compound::Walk {
                slot: Value::Object(map),
                path,
                ops,
                seen,
                ..
            } => {
                let child = Path {
                    parent: *path,
                    seg: Seg::Key(&name),
                };
                if let Some(old) = map.get_mut(name.as_ref()) {
                    value.serialize(DiffSer {
                        slot: old,
                        path: Some(&child),
                        ops,
                    })?;
                } else {
                    let new = build(value, Some(&child))?;
                    ops.push(
                        PatchOperation::Add(AddOperation {
                            path: render(Some(&child)),
                            value: new.clone(),
                        }),
                        None,
                    );
                    map.insert(name.clone().into_owned(), new);
                }
                if seen.insert(name) {
                    Ok(())
                } else {
                    Err(give_up("a member written twice"))
                }
            }
            Compound::Build {
                built: Value::Object(map),
                path,
                wrap,
                ..
            } => {
                let variant;
                let parent = match wrap {
                    Some(v) => {
                        variant = Path {
                            parent: *path,
                            seg: Seg::Key(v),
                        };
                        Some(&variant)
                    }
                    None => *path,
                };
                let child = Path {
                    parent,
                    seg: Seg::Key(&name),
                };
                let new = build(value, Some(&child))?;
                map.insert(name.into_owned(), new);
                Ok(())
            }
            _ => Err(give_up("a member outside an object")),
        }
    }

    fn key<K: Serialize + ?Sized>(&mut self, key: &K) -> Result<(), Error> {
        // Keys that serialize as strings (strings, chars, unit variants) are those serde_json
        // also keys by that string; anything it would turn into a string some other way
        // (numbers, bools) gives up, leaving it to the slow path.
        let Value::String(k) = serde_json::to_value(key)? else {
            return Err(give_up("a non-string map key"));
        };
        match self {
            Compound::Walk { key, .. } | Compound::Build { key, .. } => *key = Some(k),
        }
        Ok(())
    }

    fn value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        let key = match self {
            Compound::Walk { key, .. } | Compound::Build { key, .. } => key.take(),
        };
        let key = key.ok_or_else(|| give_up("a map value without a key"))?;
        self.member(Cow::Owned(key), value)
    }

    fn end(self) -> Result<(), Error> {
        match self {
            Compound::Walk {
                slot,
                path,
                ops,
                seen,
                next,
                ..
            } => {
                match slot {
                    Value::Array(items) => {
                        // Dropped tail elements, highest index first.
                        while items.len() > next {
                            let i = items.len() - 1;
                            let old = items.pop();
                            ops.push(
                                PatchOperation::Remove(RemoveOperation {
                                    path: render(Some(&Path {
                                        parent: path,
                                        seg: Seg::Index(i),
                                    })),
                                }),
                                old,
                            );
                        }
                    }
                    Value::Object(map) => {
                        // Every member written is in the map, so any more are gone.
                        if map.len() > seen.len() {
                            let gone: Vec<String> =
                                map.keys().filter(|k| !seen.contains(k)).cloned().collect();
                            for k in gone {
                                let old = map.remove(&k);
                                ops.push(
                                    PatchOperation::Remove(RemoveOperation {
                                        path: render(Some(&Path {
                                            parent: path,
                                            seg: Seg::Key(&k),
                                        })),
                                    }),
                                    old,
                                );
                            }
                        }
                    }
                    _ => return Err(give_up("a container changed kind")),
                }
                Ok(())
            }
            Compound::Build {
                slot,
                path,
                ops,
                built,
                wrap,
                ..
            } => {
                let new = match wrap {
                    Some(variant) => {
                        let mut m = Map::new();
                        m.insert(variant.to_owned(), built);
                        Value::Object(m)
                    }
                    None => built,
                };
                DiffSer { slot, path, ops }.set(new)
            }
        }
    }
}

impl<'s, 'p, 'a> ser::Serializer for DiffSer<'s, 'p, 'a> {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = Compound<'s, 'p, 'a>;
    type SerializeTuple = Compound<'s, 'p, 'a>;
    type SerializeTupleStruct = Compound<'s, 'p, 'a>;
    type SerializeTupleVariant = Compound<'s, 'p, 'a>;
    type SerializeMap = Compound<'s, 'p, 'a>;
    type SerializeStruct = Compound<'s, 'p, 'a>;
    type SerializeStructVariant = Compound<'s, 'p, 'a>;

    fn serialize_bool(self, v: bool) -> Result<(), Error> {
        self.set(Value::Bool(v))
    }
    fn serialize_i8(self, v: i8) -> Result<(), Error> {
        self.set(Value::from(v))
    }
    fn serialize_i16(self, v: i16) -> Result<(), Error> {
        self.set(Value::from(v))
    }
    fn serialize_i32(self, v: i32) -> Result<(), Error> {
        self.set(Value::from(v))
    }
    fn serialize_i64(self, v: i64) -> Result<(), Error> {
        self.set(Value::from(v))
    }
    fn serialize_i128(self, v: i128) -> Result<(), Error> {
        self.set(serde_json::to_value(v)?)
    }
    fn serialize_u8(self, v: u8) -> Result<(), Error> {
        self.set(Value::from(v))
    }
    fn serialize_u16(self, v: u16) -> Result<(), Error> {
        self.set(Value::from(v))
    }
    fn serialize_u32(self, v: u32) -> Result<(), Error> {
        self.set(Value::from(v))
    }
    fn serialize_u64(self, v: u64) -> Result<(), Error> {
        self.set(Value::from(v))
    }
    fn serialize_u128(self, v: u128) -> Result<(), Error> {
        self.set(serde_json::to_value(v)?)
    }
    fn serialize_f32(self, v: f32) -> Result<(), Error> {
        self.serialize_f64(f64::from(v))
    }
    fn serialize_f64(self, v: f64) -> Result<(), Error> {
        if !v.is_finite() {
            return Err(DiffError::NonFinite(NonFinite {
                path: render(self.path).to_string(),
                value: v,
            }));
        }
        self.set(serde_json::to_value(v)?)
    }
    fn serialize_char(self, v: char) -> Result<(), Error> {
        self.set_str(v.encode_utf8(&mut [0; 4]))
    }
    fn serialize_str(self, v: &str) -> Result<(), Error> {
        self.set_str(v)
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<(), Error> {
        self.set(serde_json::to_value(v)?)
    }
    fn serialize_none(self) -> Result<(), Error> {
        self.set(Value::Null)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Error> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), Error> {
        self.set(Value::Null)
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), Error> {
        self.set(Value::Null)
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<(), Error> {
        self.set_str(variant)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        let child = Path {
            parent: self.path,
            seg: Seg::Key(variant),
        };
        let new = build(value, Some(&child))?;
        let mut m = Map::new();
        m.insert(variant.to_owned(), new);
        self.set(Value::Object(m))
    }
    fn serialize_seq(self, _len: Option<usize>) -> Result<Self::SerializeSeq, Error> {
        Ok(self.compound(Kind::Array, None))
    }
    fn serialize_tuple(self, _len: usize) -> Result<Self::SerializeTuple, Error> {
        Ok(self.compound(Kind::Array, None))
    }
    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleStruct, Error> {
        Ok(self.compound(Kind::Array, None))
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleVariant, Error> {
        Ok(self.compound(Kind::Array, Some(variant)))
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<Self::SerializeMap, Error> {
        Ok(self.compound(Kind::Object, None))
    }
    fn serialize_struct(
        self,
        name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStruct, Error> {
        // serde_json's private structs (a `RawValue`; a `Number` under `arbitrary_precision`,
        // which any crate in the build may turn on) are turned into other values by its own
        // serializer.
        if name.starts_with(SERDE_JSON_PRIVATE) {
            return Err(give_up("a serde_json private type"));
        }
        Ok(self.compound(Kind::Object, None))
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStructVariant, Error> {
        Ok(self.compound(Kind::Object, Some(variant)))
    }
}

/// The sequence-like compounds: each element is an array element.
macro_rules! element_compounds {
    ($($tr:ident::$method:ident),*) => {$(
        impl ser::$tr for Compound<'_, '_, '_> {
            type Ok = ();
            type Error = Error;
            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
                self.element(value)
            }
            fn end(self) -> Result<(), Error> {
                Compound::end(self)
            }
        }
    )*};
}

element_compounds!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field
);

impl ser::SerializeMap for Compound<'_, '_, '_> {
    type Ok = ();
    type Error = Error;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Error> {
        self.key(key)
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.value(value)
    }
    fn end(self) -> Result<(), Error> {
        Compound::end(self)
    }
}

/// The struct-like compounds: each field is an object member.
macro_rules! field_compounds {
    ($($tr:ident),*) => {$(
        impl ser::$tr for Compound<'_, '_, '_> {
            type Ok = ();
            type Error = Error;
            fn serialize_field<T: Serialize + ?Sized>(
                &mut self,
                key: &'static str,
                value: &T,
            ) -> Result<(), Error> {
                self.member(Cow::Borrowed(key), value)
            }
            fn end(self) -> Result<(), Error> {
                Compound::end(self)
            }
        }
    )*};
}

field_compounds!(SerializeStruct, SerializeStructVariant);

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use proptest::collection::{btree_map, vec};
    use proptest::prelude::*;
    use serde::Serialize;
    use serde_json::{json, Value};

    use super::{diff_into, OpLog};
    use crate::delta::Patch;
    use crate::digest::Digest;
    use crate::patch::{apply, diff};

    /// `diff_into` against `old` must leave the tree equal to `to_value(new)`, return operations
    /// that turn `old` into it, and (`same_ops`) the very operations `diff` finds, in any order.
    fn check<T: Serialize>(old: &Value, new: &T, same_ops: bool) -> Result<(), TestCaseError> {
        let want = serde_json::to_value(new).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let Value::Object(mut tree) = old.clone() else {
            return Err(TestCaseError::reject("old is not an object"));
        };
        let mut log = OpLog::default();
        let before = Digest::of(&tree);
        diff_into(&mut tree, new, &mut log).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(
            before.after(&log.ops, log.olds.iter().map(Option::as_ref)),
            Some(Digest::of(&tree)),
            "the digest follows the operations"
        );
        let ops = log.ops;
        prop_assert_eq!(&Value::Object(tree), &want);
        let mut applied = old.clone();
        apply(&mut applied, &Patch(ops.clone())).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&applied, &want);
        if same_ops {
            let text = |ops: &[json_patch::PatchOperation]| {
                let mut v: Vec<String> = ops
                    .iter()
                    .map(|o| serde_json::to_string(o).unwrap_or_default())
                    .collect();
                v.sort();
                v
            };
            prop_assert_eq!(text(&ops), text(&diff(old, &want).0));
        }
        Ok(())
    }

    fn leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (-3i64..3).prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (-1.0e3f64..1.0e3).prop_map(|f| json!(f)),
            "[a-b~/é]{0,3}".prop_map(Value::String),
        ]
    }

    fn value() -> impl Strategy<Value = Value> {
        leaf().prop_recursive(4, 48, 5, |inner| {
            prop_oneof![
                vec(inner.clone(), 0..5).prop_map(Value::Array),
                btree_map("[a-c~/]{0,2}", inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn object() -> impl Strategy<Value = Value> {
        btree_map("[a-c~/]{0,2}", value(), 0..6)
            .prop_map(|m| Value::Object(m.into_iter().collect()))
    }

    #[derive(Serialize, Clone, Debug)]
    enum Shape {
        Empty,
        Round(u8),
        Pair(i8, i8),
        Boxed { w: u16, label: String },
    }

    #[derive(Serialize, Clone, Debug)]
    struct Level {
        price: f64,
        qty: f64,
        owner: String,
    }

    #[derive(Serialize, Clone, Debug)]
    struct Doc {
        name: String,
        n: u32,
        ok: bool,
        levels: Vec<Level>,
        #[serde(skip_serializing_if = "Option::is_none")]
        note: Option<String>,
        shape: Shape,
        tags: BTreeMap<String, i64>,
        pair: (u8, String),
        letter: char,
    }

    fn doc() -> impl Strategy<Value = Doc> {
        let level = (0.0f64..10.0, 0.0f64..5.0, "[A-C]{1,3}")
            .prop_map(|(price, qty, owner)| Level { price, qty, owner });
        let shape = prop_oneof![
            Just(Shape::Empty),
            any::<u8>().prop_map(Shape::Round),
            (any::<i8>(), any::<i8>()).prop_map(|(a, b)| Shape::Pair(a, b)),
            (any::<u16>(), "[x-z]{0,2}").prop_map(|(w, label)| Shape::Boxed { w, label }),
        ];
        (
            ("[a-c]{0,3}", any::<u32>(), any::<bool>()),
            vec(level, 0..4),
            proptest::option::of("[a-c]{0,2}"),
            shape,
            btree_map("[a-c~/]{1,2}", -3i64..3, 0..4),
            (any::<u8>(), "[a-c]{0,2}", any::<char>()),
        )
            .prop_map(
                |((name, n, ok), levels, note, shape, tags, (p0, p1, letter))| Doc {
                    name,
                    n,
                    ok,
                    levels,
                    note,
                    shape,
                    tags,
                    pair: (p0, p1),
                    letter,
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

        /// Untyped documents: exactly `diff`'s operations.
        #[test]
        fn values_diff_like_diff(a in object(), b in object()) {
            check(&a, &b, true)?;
        }

        /// Typed documents, from an earlier version of the same type (the update path) and
        /// from unrelated JSON (every kind of replacement).
        #[test]
        fn typed_documents_land_on_to_value(a in doc(), b in doc(), other in object()) {
            let old = serde_json::to_value(&a).map_err(|e| TestCaseError::fail(e.to_string()))?;
            check(&old, &b, false)?;
            check(&other, &b, false)?;
        }
    }

    #[test]
    fn unchanged_documents_give_no_operations() {
        let v = json!({"a": [1, {"b": "x"}], "c": null, "d": 2.5});
        let Value::Object(mut tree) = v.clone() else {
            unreachable!()
        };
        let mut ops = OpLog::default();
        diff_into(&mut tree, &v, &mut ops).expect("diffs");
        assert!(ops.ops.is_empty(), "{ops:?}");
        assert_eq!(Value::Object(tree), v);
    }

    #[test]
    fn gives_up_on_what_the_slow_path_must_handle() {
        let mut ops = OpLog::default();
        // Integer map keys, which serde_json turns into strings its own way (a new member is
        // built by serde_json itself, so only a walk into an existing one meets the keys).
        let ints: HashMap<u32, u8> = [(1, 2)].into_iter().collect();
        let mut tree = json!({"m": {"1": 0}})
            .as_object()
            .cloned()
            .unwrap_or_default();
        assert!(diff_into(&mut tree, &BTreeMap::from([("m", &ints)]), &mut ops).is_err());
        // A RawValue, which serde_json parses.
        let raw = serde_json::value::to_raw_value(&json!({"x": 1})).expect("raw");
        let mut tree = json!({"r": {"x": 0}})
            .as_object()
            .cloned()
            .unwrap_or_default();
        assert!(diff_into(&mut tree, &BTreeMap::from([("r", &raw)]), &mut ops).is_err());
        // A top-level enum whose variant changes: the root would be replaced whole.
        #[derive(Serialize)]
        enum Top {
            A { x: u32 },
        }
        let mut tree = json!({"B": {"y": 2}})
            .as_object()
            .cloned()
            .unwrap_or_default();
        assert!(diff_into(&mut tree, &Top::A { x: 1 }, &mut ops).is_err());
        // A root that is not an object.
        let mut tree = serde_json::Map::new();
        assert!(diff_into(&mut tree, &[1, 2], &mut ops).is_err());
        // A member written twice.
        struct Twice;
        impl Serialize for Twice {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeStruct;
                let mut st = s.serialize_struct("Twice", 2)?;
                st.serialize_field("a", &1)?;
                st.serialize_field("a", &2)?;
                st.end()
            }
        }
        let mut tree = serde_json::Map::new();
        assert!(diff_into(&mut tree, &Twice, &mut ops).is_err());
    }
}
