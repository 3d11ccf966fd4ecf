//! Finding the numbers JSON cannot hold (NaN, ±infinity) in a value about to be written.
//!
//! `serde_json` turns them into `null` without a word when it builds a `Value` or writes text,
//! so a document holding one would be stored as something its own type cannot read back. The
//! write path refuses such a value instead; [`find`] says where the number is.

use std::borrow::Cow;
use std::fmt;

use serde::ser::{self, Serialize};

/// A NaN or an infinity, and where it is.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct NonFinite {
    /// RFC 6901 pointer to the number, from the value's root.
    pub path: String,
    /// The number.
    pub value: f64,
}

/// The first NaN or infinity `value` serializes, or `None`. A value whose `Serialize` fails
/// also gives `None`: the caller's own serialization reports that error.
pub(crate) fn find<T: Serialize + ?Sized>(value: &T) -> Option<NonFinite> {
    let mut path = Vec::new();
    match value.serialize(Finder { path: &mut path }) {
        Err(Stop::Found(found)) => Some(found),
        Ok(()) | Err(Stop::Other) => None,
    }
}

/// The path so far, as decoded tokens.
type Tokens = Vec<Cow<'static, str>>;

fn pointer(path: &Tokens) -> String {
    let mut out = String::new();
    for t in path {
        out.push('/');
        out.push_str(&t.replace('~', "~0").replace('/', "~1"));
    }
    out
}

#[derive(Debug)]
enum Stop {
    Found(NonFinite),
    Other,
}

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stop::Found(n) => write!(f, "{} at {:?}", n.value, n.path),
            Stop::Other => f.write_str("the value does not serialize"),
        }
    }
}

impl std::error::Error for Stop {}

impl ser::Error for Stop {
    fn custom<M: fmt::Display>(_msg: M) -> Self {
        Stop::Other
    }
}

struct Finder<'a> {
    path: &'a mut Tokens,
}

impl Finder<'_> {
    fn float(self, value: f64) -> Result<(), Stop> {
        if value.is_finite() {
            return Ok(());
        }
        Err(Stop::Found(NonFinite {
            path: pointer(self.path),
            value,
        }))
    }

    fn under<T: Serialize + ?Sized>(
        &mut self,
        token: Cow<'static, str>,
        v: &T,
    ) -> Result<(), Stop> {
        self.path.push(token);
        let r = v.serialize(Finder { path: self.path });
        self.path.pop();
        r
    }
}

/// A container being walked: `index` counts elements, `key` holds a map key until its value.
struct Walk<'a> {
    path: &'a mut Tokens,
    index: usize,
    key: Option<String>,
    /// The variant name pushed for a tuple or struct variant, popped at the end.
    variant: bool,
}

impl Walk<'_> {
    fn element<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), Stop> {
        let token = Cow::Owned(self.index.to_string());
        self.index += 1;
        Finder { path: self.path }.under(token, v)
    }

    fn field<T: Serialize + ?Sized>(&mut self, name: &'static str, v: &T) -> Result<(), Stop> {
        Finder { path: self.path }.under(Cow::Borrowed(name), v)
    }

    fn end(self) -> Result<(), Stop> {
        if self.variant {
            self.path.pop();
        }
        Ok(())
    }
}

impl<'a> ser::Serializer for Finder<'a> {
    type Ok = ();
    type Error = Stop;
    type SerializeSeq = Walk<'a>;
    type SerializeTuple = Walk<'a>;
    type SerializeTupleStruct = Walk<'a>;
    type SerializeTupleVariant = Walk<'a>;
    type SerializeMap = Walk<'a>;
    type SerializeStruct = Walk<'a>;
    type SerializeStructVariant = Walk<'a>;

    fn serialize_f32(self, v: f32) -> Result<(), Stop> {
        self.float(f64::from(v))
    }
    fn serialize_f64(self, v: f64) -> Result<(), Stop> {
        self.float(v)
    }
    fn serialize_bool(self, _: bool) -> Result<(), Stop> {
        Ok(())
    }
    fn serialize_i8(self, _: i8) -> Result<(), Stop> {
        Ok(())
    }
    fn serialize_i16(self, _: i16) -> Result<(), Stop> {
        Ok(())
    }
    fn serialize_i32(self, _: i32) -> Result<(), Stop> {
        Ok(())
    }
    fn serialize_i64(self, _: i64) -> Result<(), Stop> {
        Ok(())
    }
    fn serialize_i128(self, _: i128) -> Result<(), Stop> {
        Ok(())
    }
    fn serialize_u8(self, _: u8) -> Result<(), Stop> {
        Ok(())
    }
    fn serialize_u16(self, _: u16) -> Result<(), Stop> {
        Ok(())
    }
    fn serialize_u32(self, _: u32) -> Result<(), Stop> {
        Ok(())
    }
    fn serialize_u64(self, _: u64) -> Result<(), Stop> {
        Ok(())
    }
    fn serialize_u128(self, _: u128) -> Result<(), Stop> {
        Ok(())
    }
    fn serialize_char(self, _: char) -> Result<(), Stop> {
        Ok(())
    }
    fn serialize_str(self, _: &str) -> Result<(), Stop> {
        Ok(())
    }
    fn serialize_bytes(self, _: &[u8]) -> Result<(), Stop> {
        Ok(())
    }
    fn serialize_none(self) -> Result<(), Stop> {
        Ok(())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, v: &T) -> Result<(), Stop> {
        v.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), Stop> {
        Ok(())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), Stop> {
        Ok(())
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, _: &'static str) -> Result<(), Stop> {
        Ok(())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        v: &T,
    ) -> Result<(), Stop> {
        v.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        mut self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        v: &T,
    ) -> Result<(), Stop> {
        self.under(Cow::Borrowed(variant), v)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Walk<'a>, Stop> {
        Ok(self.walk(None))
    }
    fn serialize_tuple(self, _: usize) -> Result<Walk<'a>, Stop> {
        Ok(self.walk(None))
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Walk<'a>, Stop> {
        Ok(self.walk(None))
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Walk<'a>, Stop> {
        Ok(self.walk(Some(variant)))
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Walk<'a>, Stop> {
        Ok(self.walk(None))
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Walk<'a>, Stop> {
        Ok(self.walk(None))
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Walk<'a>, Stop> {
        Ok(self.walk(Some(variant)))
    }
}

impl<'a> Finder<'a> {
    fn walk(self, variant: Option<&'static str>) -> Walk<'a> {
        if let Some(v) = variant {
            self.path.push(Cow::Borrowed(v));
        }
        Walk {
            path: self.path,
            index: 0,
            key: None,
            variant: variant.is_some(),
        }
    }
}

macro_rules! element_walks {
    ($($tr:ident::$method:ident),*) => {$(
        impl ser::$tr for Walk<'_> {
            type Ok = ();
            type Error = Stop;
            fn $method<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), Stop> {
                self.element(v)
            }
            fn end(self) -> Result<(), Stop> {
                Walk::end(self)
            }
        }
    )*};
}

element_walks!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field
);

macro_rules! field_walks {
    ($($tr:ident),*) => {$(
        impl ser::$tr for Walk<'_> {
            type Ok = ();
            type Error = Stop;
            fn serialize_field<T: Serialize + ?Sized>(
                &mut self,
                name: &'static str,
                v: &T,
            ) -> Result<(), Stop> {
                self.field(name, v)
            }
            fn end(self) -> Result<(), Stop> {
                Walk::end(self)
            }
        }
    )*};
}

field_walks!(SerializeStruct, SerializeStructVariant);

impl ser::SerializeMap for Walk<'_> {
    type Ok = ();
    type Error = Stop;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Stop> {
        // A key that does not serialize to a string is serde_json's to refuse or convert.
        self.key = Some(match serde_json::to_value(key) {
            Ok(serde_json::Value::String(s)) => s,
            Ok(other) => other.to_string(),
            Err(_) => return Err(Stop::Other),
        });
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), Stop> {
        let key = self.key.take().unwrap_or_default();
        Finder { path: self.path }.under(Cow::Owned(key), v)
    }
    fn end(self) -> Result<(), Stop> {
        Walk::end(self)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Serialize;

    use super::*;

    #[derive(Serialize)]
    struct Level {
        price: f64,
        qty: f32,
    }

    #[derive(Serialize)]
    enum Shape {
        Circle { r: f64 },
        Pair(f64, f64),
        One(f64),
    }

    #[derive(Serialize)]
    struct Doc {
        name: String,
        levels: Vec<Level>,
        by: BTreeMap<String, f64>,
        shapes: Vec<Shape>,
        maybe: Option<f64>,
    }

    fn doc() -> Doc {
        Doc {
            name: "x".into(),
            levels: vec![
                Level {
                    price: 1.5,
                    qty: 2.0,
                },
                Level {
                    price: 2.5,
                    qty: 3.0,
                },
            ],
            by: BTreeMap::from([("a/b~c".to_string(), 1.0)]),
            shapes: vec![
                Shape::Circle { r: 1.0 },
                Shape::Pair(1.0, 2.0),
                Shape::One(3.0),
            ],
            maybe: Some(4.0),
        }
    }

    #[test]
    fn finite_values_pass_and_each_non_finite_number_is_located() {
        assert_eq!(find(&doc()), None);
        type Change = fn(&mut Doc);
        let cases: Vec<(Change, &str, f64)> = vec![
            (
                |d| d.levels[1].price = f64::NAN,
                "/levels/1/price",
                f64::NAN,
            ),
            (
                |d| d.levels[0].qty = f32::INFINITY,
                "/levels/0/qty",
                f64::INFINITY,
            ),
            (
                |d| {
                    d.by.insert("a/b~c".into(), f64::NEG_INFINITY);
                },
                "/by/a~1b~0c",
                f64::NEG_INFINITY,
            ),
            (
                |d| d.shapes[0] = Shape::Circle { r: f64::NAN },
                "/shapes/0/Circle/r",
                f64::NAN,
            ),
            (
                |d| d.shapes[1] = Shape::Pair(1.0, f64::NAN),
                "/shapes/1/Pair/1",
                f64::NAN,
            ),
            (
                |d| d.shapes[2] = Shape::One(f64::INFINITY),
                "/shapes/2/One",
                f64::INFINITY,
            ),
            (|d| d.maybe = Some(f64::NAN), "/maybe", f64::NAN),
        ];
        for (change, path, value) in cases {
            let mut d = doc();
            change(&mut d);
            let found = find(&d).expect("found");
            assert_eq!(found.path, path);
            assert!(
                found.value.to_bits() == value.to_bits()
                    || (found.value.is_nan() && value.is_nan()),
                "{found:?}"
            );
        }
        assert_eq!(
            find(&f64::NAN).map(|n| n.path),
            Some(String::new()),
            "the root itself"
        );
    }
}
