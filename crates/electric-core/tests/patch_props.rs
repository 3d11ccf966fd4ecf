//! Property tests for [`electric_core::patch`]: on random documents, `diff` followed by `apply`
//! reproduces the target, equal documents diff to nothing, and a failing patch leaves the
//! document untouched.

use electric_core::delta::PatchOperation;
use electric_core::patch::{apply, diff, json_size, patch_size};
use electric_core::Patch;
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use serde_json::{json, Map, Number, Value};

/// Object keys from a small alphabet (so two random documents share keys often), including
/// keys that need JSON-Pointer escaping, the empty key, digit-only keys and unicode.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("-".to_owned()),
        "[a-c]{1,2}",
        "[~/a]{1,3}",
        "[0-9]",
        "[é日~/ ]{1,2}",
        "~[01]",
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-3i64..3).prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1.0e6f64..1.0e6).prop_map(|f| Number::from_f64(f).map_or(Value::Null, Value::Number)),
        Just(json!(1.0)),
        "[a-b~/\"\\\\é]{0,3}".prop_map(Value::String),
    ]
}

/// Nested objects and arrays up to depth 4.
fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 48, 5, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..5).prop_map(Value::Array),
            btree_map(key(), inner, 0..5).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn object() -> impl Strategy<Value = Value> {
    btree_map(key(), value(), 0..6)
        .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>()))
}

/// Edits `v` in place, steered by `choices`, taking new material from `donor`: sets, removes
/// and changes members, grows, shrinks and rewrites arrays, changes types.
fn mutate(v: &mut Value, choices: &mut impl Iterator<Item = u32>, donor: &Value, new_key: &str) {
    let Some(c) = choices.next() else { return };
    match v {
        Value::Object(m) if !m.is_empty() && c % 5 < 3 => {
            let i = (c / 5) as usize % m.len();
            let k = m.keys().nth(i).cloned().unwrap_or_default();
            match c % 5 {
                0 => {
                    m.remove(&k);
                }
                _ => {
                    if let Some(child) = m.get_mut(&k) {
                        mutate(child, choices, donor, new_key);
                    }
                }
            }
        }
        Value::Object(m) if c % 5 == 3 => {
            m.insert(new_key.to_owned(), donor.clone());
        }
        Value::Array(a) if !a.is_empty() && c % 6 < 3 => {
            let i = (c / 6) as usize % a.len();
            match c % 6 {
                0 => a.truncate(i),
                1 => {
                    a.remove(i);
                }
                _ => mutate(&mut a[i], choices, donor, new_key),
            }
        }
        Value::Array(a) if c % 6 == 3 => {
            a.extend(std::iter::repeat_n(donor.clone(), 1 + (c / 6) as usize % 3));
        }
        Value::Array(a) if c % 6 == 4 => a.insert(0, donor.clone()),
        _ => *v = donor.clone(),
    }
}

fn check_pair(a: &Value, b: &Value) -> Result<(), TestCaseError> {
    let p = diff(a, b);
    for op in p.iter() {
        prop_assert!(
            matches!(
                op,
                PatchOperation::Add(_) | PatchOperation::Remove(_) | PatchOperation::Replace(_)
            ),
            "unexpected op {op}"
        );
    }
    let mut doc = a.clone();
    if let Err(e) = apply(&mut doc, &p) {
        return Err(TestCaseError::fail(format!("{e}; patch {p}")));
    }
    prop_assert_eq!(&doc, b, "patch {}", p);

    // The patch survives the wire.
    let bytes = serde_json::to_vec(&p).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(patch_size(&p), bytes.len());
    let back: Patch =
        serde_json::from_slice(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
    // Compare paths and ops only: serde_json (built without `float_roundtrip`) may parse a
    // float back one ulp off.
    prop_assert_eq!(back.len(), p.len());
    for (x, y) in back.iter().zip(p.iter()) {
        prop_assert_eq!(x.path(), y.path());
        prop_assert_eq!(std::mem::discriminant(x), std::mem::discriminant(y));
    }
    let json = serde_json::to_vec(b).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(json_size(b), json.len());

    prop_assert!(diff(a, a).is_empty());
    prop_assert!(diff(a, &a.clone()).is_empty());
    prop_assert!(diff(b, &b.clone()).is_empty());

    // A patch that fails at its last operation leaves the document as it was.
    let mut failing = p.clone();
    failing.0.push(
        serde_json::from_value(json!({"op": "test", "path": "", "value": "not the document"}))
            .map_err(|e| TestCaseError::fail(e.to_string()))?,
    );
    if *b != json!("not the document") {
        let mut doc = a.clone();
        prop_assert!(apply(&mut doc, &failing).is_err());
        prop_assert_eq!(&doc, a);
    }
    Ok(())
}

/// Every pointer into `v` (escaped), plus the append position `-` of every array.
fn pointers(v: &Value, prefix: &str, out: &mut Vec<String>) {
    out.push(prefix.to_owned());
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                let esc = k.replace('~', "~0").replace('/', "~1");
                pointers(child, &format!("{prefix}/{esc}"), out);
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                pointers(child, &format!("{prefix}/{i}"), out);
            }
            out.push(format!("{prefix}/-"));
        }
        _ => {}
    }
}

/// A random operation over `paths` (pointers into the document before any operation ran, so
/// later operations may well no longer apply).
fn random_op(
    kind: u8,
    path: &prop::sample::Index,
    from: &prop::sample::Index,
    value: &Value,
    paths: &[String],
) -> Value {
    let path = path.get(paths);
    let from = from.get(paths);
    match kind % 6 {
        0 => json!({"op": "add", "path": path, "value": value}),
        1 => json!({"op": "remove", "path": path}),
        2 => json!({"op": "replace", "path": path, "value": value}),
        3 => json!({"op": "move", "from": from, "path": path}),
        4 => json!({"op": "copy", "from": from, "path": path}),
        _ => json!({"op": "test", "path": path, "value": value}),
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Unrelated documents of any type (root type changes included).
    #[test]
    fn diff_then_apply_reproduces_any_target(a in value(), b in value()) {
        check_pair(&a, &b)?;
    }

    /// A document and an edited copy of it: the common case of small, deep changes.
    #[test]
    fn diff_then_apply_reproduces_an_edit(
        a in object(),
        donor in value(),
        new_key in key(),
        edits in vec(vec(any::<u32>(), 1..6), 1..6),
    ) {
        let mut b = a.clone();
        for e in &edits {
            mutate(&mut b, &mut e.iter().copied(), &donor, &new_key);
        }
        check_pair(&a, &b)?;
        check_pair(&b, &a)?;
    }

    /// Any patch, valid or not: `apply` either succeeds exactly like a plain application or
    /// fails leaving the document untouched (and never panics).
    #[test]
    fn apply_is_all_or_nothing(
        a in object(),
        picks in vec(
            (any::<u8>(), any::<prop::sample::Index>(), any::<prop::sample::Index>(), leaf()),
            1..6,
        ),
    ) {
        let mut paths = Vec::new();
        pointers(&a, "", &mut paths);
        paths.push("/missing".to_owned());
        let raw: Vec<Value> = picks
            .iter()
            .map(|(kind, path, from, value)| random_op(*kind, path, from, value, &paths))
            .collect();
        let patch: Patch = serde_json::from_value(Value::Array(raw))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;

        let mut plain = a.clone();
        let plain_result = json_patch::patch_unsafe(&mut plain, &patch);
        let mut doc = a.clone();
        match apply(&mut doc, &patch) {
            Ok(()) => {
                prop_assert!(plain_result.is_ok(), "plain application failed: {:?}", plain_result);
                prop_assert_eq!(&doc, &plain);
            }
            Err(e) => {
                prop_assert!(plain_result.is_err(), "apply failed ({}) but plain application did not", e);
                prop_assert_eq!(&doc, &a, "failed patch {} changed the document", patch);
            }
        }
    }

    /// Patches of `replace` operations only, which `apply` runs without `json_patch`: the same
    /// result as a plain application, or an untouched document when any path does not resolve
    /// (paths include escaped keys, digit-only keys, `-` and a missing member).
    #[test]
    fn replace_only_patches_apply_like_json_patch(
        a in object(),
        picks in vec((any::<prop::sample::Index>(), value()), 1..6),
    ) {
        let mut paths = Vec::new();
        pointers(&a, "", &mut paths);
        paths.push("/missing".to_owned());
        paths.push("/0/x".to_owned());
        let raw: Vec<Value> = picks
            .iter()
            .map(|(path, value)| json!({"op": "replace", "path": path.get(&paths), "value": value}))
            .collect();
        let patch: Patch = serde_json::from_value(Value::Array(raw))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;

        let mut plain = a.clone();
        let plain_result = json_patch::patch(&mut plain, &patch);
        let mut doc = a.clone();
        let result = apply(&mut doc, &patch);
        prop_assert_eq!(result.is_ok(), plain_result.is_ok(), "{} vs {:?}", patch, plain_result);
        prop_assert_eq!(&doc, &plain);
        if result.is_err() {
            prop_assert_eq!(&doc, &a);
        }
    }
}
