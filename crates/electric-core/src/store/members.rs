//! A document's top-level members as JSON text, the form stores keep them in.
//!
//! Stores hand members over as the text they hold, unparsed: a reader deserializes its type
//! straight from them ([`Members::deserialize`]) instead of building a `serde_json::Value` tree
//! first and converting that, which for a typical document is several times slower.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeOwned, DeserializeSeed, MapAccess, Visitor};
use serde::forward_to_deserialize_any;
use serde_json::{Map, Value};

/// The top-level members of a stored document: name and JSON text, in the order the store gave
/// them (equality compares them in that order).
///
/// The texts are what the store holds; a store does not parse them, so a foreign writer's broken
/// JSON is found when they are read ([`Members::deserialize`], [`Members::to_map`]), as a
/// [`MembersError`] that names the member.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Members {
    entries: Vec<(String, Vec<u8>)>,
}

impl Members {
    /// No members.
    pub fn new() -> Self {
        Members::default()
    }

    /// Room for `n` members.
    pub fn with_capacity(n: usize) -> Self {
        Members {
            entries: Vec::with_capacity(n),
        }
    }

    /// Adds member `name` with JSON text `text` (not checked here; see the type's docs).
    pub fn push(&mut self, name: impl Into<String>, text: impl Into<Vec<u8>>) {
        self.entries.push((name.into(), text.into()));
    }

    /// The members of a JSON object, serialized.
    pub fn from_map(map: &Map<String, Value>) -> Self {
        Members {
            entries: map
                .iter()
                .map(|(k, v)| (k.clone(), v.to_string().into_bytes()))
                .collect(),
        }
    }

    /// How many members there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The length of the document as one compact JSON object: `{"name":text,…}` (names counted
    /// as they are, without escapes).
    pub fn json_len(&self) -> usize {
        let members: usize = self
            .entries
            .iter()
            .map(|(n, t)| n.len() + 3 + t.len())
            .sum();
        2 + members + self.entries.len().saturating_sub(1)
    }

    /// Whether there are no members.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The JSON text of member `name`.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.entries
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.as_slice())
    }

    /// Member `name` parsed, `None` when there is no such member.
    ///
    /// # Errors
    ///
    /// The member's text is not JSON.
    pub fn value(&self, name: &str) -> Result<Option<Value>, MembersError> {
        self.get(name)
            .map(|t| serde_json::from_slice(t).map_err(|e| MembersError::new(Some(name), e)))
            .transpose()
    }

    /// Every member as `(name, JSON text)`.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.entries.iter().map(|(n, t)| (n.as_str(), t.as_slice()))
    }

    /// The document as a JSON object (each member parsed).
    ///
    /// # Errors
    ///
    /// A member's text is not JSON.
    pub fn to_map(&self) -> Result<Map<String, Value>, MembersError> {
        self.iter()
            .map(|(name, text)| {
                serde_json::from_slice(text)
                    .map(|v| (name.to_string(), v))
                    .map_err(|e| MembersError::new(Some(name), e))
            })
            .collect()
    }

    /// Deserializes `T` from the members as if they were one JSON object, parsing each member's
    /// text once, straight into `T`.
    ///
    /// # Errors
    ///
    /// A member's text is not JSON ([`MembersError::is_syntax`]), or the members do not fit `T`.
    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<T, MembersError> {
        let failed = Cell::new(None);
        let access = Access {
            entries: self.entries.iter().enumerate(),
            value: None,
            current: 0,
            failed: &failed,
        };
        T::deserialize(MapDeserializer(access))
            .map_err(|e| MembersError::new(failed.get().map(|i| self.entries[i].0.as_str()), e))
    }
}

impl fmt::Debug for Members {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(
                self.entries
                    .iter()
                    .map(|(n, t)| (n, String::from_utf8_lossy(t))),
            )
            .finish()
    }
}

/// Reading [`Members`] failed.
#[derive(Debug, thiserror::Error)]
#[error("{}{source}", member.as_ref().map(|m| format!("member {m:?}: ")).unwrap_or_default())]
pub struct MembersError {
    /// The member whose text failed to parse (`None`: the members as a whole did not fit).
    pub member: Option<String>,
    /// The parser's error.
    #[source]
    pub source: serde_json::Error,
}

impl MembersError {
    fn new(member: Option<&str>, source: serde_json::Error) -> Self {
        MembersError {
            member: member.map(str::to_string),
            source,
        }
    }

    /// Whether a member's text could not be parsed (rather than parsed into JSON of the wrong
    /// shape): it is not JSON, or it is JSON serde_json cannot represent (a number out of
    /// range, nesting deeper than 128 levels).
    pub fn is_syntax(&self) -> bool {
        self.source.is_syntax() || self.source.is_eof()
    }
}

/// A deserializer presenting the members as one JSON object.
struct MapDeserializer<'a>(Access<'a>);

struct Access<'a> {
    entries: std::iter::Enumerate<std::slice::Iter<'a, (String, Vec<u8>)>>,
    value: Option<&'a [u8]>,
    current: usize,
    failed: &'a Cell<Option<usize>>,
}

impl<'de> de::Deserializer<'de> for MapDeserializer<'de> {
    type Error = serde_json::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_map(self.0)
    }

    // An object is `Some` object, and the inside of a newtype around a map.
    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_newtype_struct(self)
    }

    /// An externally tagged enum (`{"Variant": …}`): rare for documents, so the members are
    /// parsed into a map and serde_json's own enum handling takes over.
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        let mut map = Map::new();
        for (i, (member, text)) in self.0.entries {
            match serde_json::from_slice(text) {
                Ok(v) => {
                    map.insert(member.clone(), v);
                }
                Err(e) => {
                    self.0.failed.set(Some(i));
                    return Err(e);
                }
            }
        }
        de::Deserializer::deserialize_enum(Value::Object(map), name, variants, visitor)
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple
        tuple_struct map struct identifier ignored_any
    }
}

impl<'de> MapAccess<'de> for Access<'de> {
    type Error = serde_json::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        let Some((i, (name, text))) = self.entries.next() else {
            return Ok(None);
        };
        self.current = i;
        self.value = Some(text);
        seed.deserialize(de::value::BorrowedStrDeserializer::new(name))
            .map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        let text = self
            .value
            .ok_or_else(|| de::Error::custom("value requested before its key"))?;
        // Checking UTF-8 once up front lets the parser skip it per string (about a fifth faster
        // for string-keyed documents); text that is not UTF-8 gets the byte parser's error.
        let parsed = match std::str::from_utf8(text) {
            Ok(text) => parse_one(serde_json::Deserializer::from_str(text), seed),
            Err(_) => parse_one(serde_json::Deserializer::from_slice(text), seed),
        };
        if parsed.is_err() {
            self.failed.set(Some(self.current));
        }
        parsed
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

/// Deserializes one whole JSON text (nothing may follow the value).
fn parse_one<'de, R, V>(
    mut de: serde_json::Deserializer<R>,
    seed: V,
) -> Result<V::Value, serde_json::Error>
where
    R: serde_json::de::Read<'de>,
    V: DeserializeSeed<'de>,
{
    let v = seed.deserialize(&mut de)?;
    de.end()?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;
    use std::collections::BTreeMap;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Doc {
        a: u32,
        b: Vec<String>,
        #[serde(default)]
        c: Option<f64>,
    }

    fn members(pairs: &[(&str, &str)]) -> Members {
        let mut m = Members::new();
        for (n, t) in pairs {
            m.push(*n, t.as_bytes());
        }
        m
    }

    #[test]
    fn deserializes_a_type_from_member_texts() {
        let m = members(&[("b", r#"["x","y"]"#), ("a", "7"), ("extra", r#"{"z":[1]}"#)]);
        let doc: Doc = m.deserialize().unwrap();
        assert_eq!(
            doc,
            Doc {
                a: 7,
                b: vec!["x".into(), "y".into()],
                c: None
            }
        );
        let v: Value = m.deserialize().unwrap();
        assert_eq!(v, json!({"a": 7, "b": ["x", "y"], "extra": {"z": [1]}}));
        assert_eq!(Value::Object(m.to_map().unwrap()), v);
    }

    #[test]
    fn broken_text_names_the_member() {
        let m = members(&[("a", "7"), ("b", "[\"x\""), ("c", "1")]);
        let e = m.deserialize::<Doc>().unwrap_err();
        assert_eq!(e.member.as_deref(), Some("b"));
        assert!(e.is_syntax(), "{e}");
        let e = m.to_map().unwrap_err();
        assert_eq!(e.member.as_deref(), Some("b"));
        // Text that is not UTF-8 is a syntax error naming its member.
        let mut m = members(&[("a", "7")]);
        m.push("b", b"\"\xff\"".to_vec());
        let e = m.deserialize::<Value>().unwrap_err();
        assert_eq!(e.member.as_deref(), Some("b"));
        assert!(e.is_syntax(), "{e}");
        // Trailing garbage after a member's value is an error too.
        let e = members(&[("a", "7 8")]).deserialize::<Value>().unwrap_err();
        assert_eq!(e.member.as_deref(), Some("a"));
    }

    #[test]
    fn wrong_shape_is_not_a_syntax_error() {
        let e = members(&[("a", "\"seven\""), ("b", "[]")])
            .deserialize::<Doc>()
            .unwrap_err();
        assert!(!e.is_syntax());
        assert_eq!(e.member.as_deref(), Some("a"));
        let e = members(&[("b", "[]")]).deserialize::<Doc>().unwrap_err();
        assert_eq!(e.member, None, "a missing field is no member's fault: {e}");
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Wrapper(BTreeMap<String, u32>);

    #[derive(Debug, Deserialize, PartialEq)]
    enum Shape {
        Circle { r: u32 },
        Square(u32),
    }

    #[test]
    fn newtypes_options_and_enums_deserialize_as_from_a_map() {
        let m = members(&[("x", "1"), ("y", "2")]);
        let w: Wrapper = m.deserialize().unwrap();
        assert_eq!(w.0, BTreeMap::from([("x".into(), 1), ("y".into(), 2)]));
        let o: Option<BTreeMap<String, u32>> = m.deserialize().unwrap();
        assert_eq!(o.map(|o| o.len()), Some(2));
        let c: Shape = members(&[("Circle", r#"{"r":3}"#)]).deserialize().unwrap();
        assert_eq!(c, Shape::Circle { r: 3 });
        let s: Shape = members(&[("Square", "4")]).deserialize().unwrap();
        assert_eq!(s, Shape::Square(4));
        let e = members(&[("Circle", "{")])
            .deserialize::<Shape>()
            .unwrap_err();
        assert_eq!(e.member.as_deref(), Some("Circle"));
        assert!(e.is_syntax());
        assert!(members(&[("Triangle", "1")])
            .deserialize::<Shape>()
            .is_err());
    }

    #[test]
    fn round_trips_through_a_map() {
        let map = json!({"a": 1, "s": "x\"y", "n": null, "o": {"k": [1.5]}});
        let Value::Object(map) = map else {
            unreachable!()
        };
        let m = Members::from_map(&map);
        assert_eq!(m.to_map().unwrap(), map);
        assert_eq!(m.json_len(), serde_json::to_string(&map).unwrap().len());
        assert_eq!(Members::new().json_len(), 2);
        assert_eq!(m.value("s").unwrap(), Some(json!("x\"y")));
        assert_eq!(m.value("missing").unwrap(), None);
    }
}
