//! The pgoutput decoder: bytes captured from PostgreSQL 15 (tests/vectors/pgoutput_v1.txt, from
//! `pg_logical_slot_peek_binary_changes(…, 'proto_version', '1', …)`), property tests and a
//! fuzz-style pass over mutations and truncations of the captured bytes.

use std::collections::HashMap;
use std::sync::Arc;

use electric_core::cdc::{CdcError, Op, TableName, Value};
use electric_postgres::decode_captured;
use electric_postgres::pgoutput::{decode, encode, Message, RelColumn, Relation, TupleValue};
use proptest::prelude::*;

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Each line: `lsn xid hex`.
fn vectors() -> Vec<Vec<u8>> {
    include_str!("vectors/pgoutput_v1.txt")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| unhex(l.split_whitespace().nth(2).unwrap()))
        .collect()
}

#[test]
fn every_captured_message_decodes_and_re_encodes_byte_for_byte() {
    let v = vectors();
    assert_eq!(v.len(), 33);
    let mut tags = std::collections::BTreeSet::new();
    for bytes in &v {
        let msg = decode(bytes).unwrap_or_else(|e| panic!("{e}: {bytes:02x?}"));
        tags.insert(bytes[0] as char);
        assert_eq!(&encode(&msg), bytes);
    }
    assert_eq!(
        tags.into_iter().collect::<String>(),
        "BCDIRTU",
        "the capture covers these message kinds"
    );
}

#[test]
fn captured_changes_decode_to_the_rows_that_were_written() {
    let key: Vec<Arc<str>> = vec!["id".into()];
    let full_key: Vec<Arc<str>> = vec!["k".into(), "v".into()];
    let tables = HashMap::from([
        (TableName::new("public", "vec_types"), key),
        (TableName::new("public", "vec_full"), full_key),
    ]);
    let changes = decode_captured(&vectors(), &tables).unwrap();
    let ops: Vec<Op> = changes.iter().map(|c| c.0).collect();
    use Op::*;
    assert_eq!(
        ops,
        vec![
            Insert, Insert, Update, Delete, Insert, Delete, Insert, Insert, Delete, Insert, Delete,
            Insert
        ]
    );
    let first = changes[0].3.as_ref().unwrap();
    assert_eq!(first.get("b"), Some(&Value::Bool(true)));
    assert_eq!(first.get("i2"), Some(&Value::Int(-2)));
    assert_eq!(first.get("i4"), Some(&Value::Int(40000)));
    assert_eq!(first.get("f4"), Some(&Value::Float(1.5)));
    assert_eq!(first.get("f8"), Some(&Value::Text("NaN".into())));
    assert_eq!(first.get("t"), Some(&Value::Text("héllo 'q'".into())));
    assert_eq!(first.get("bp"), Some(&Value::Text("ab ".into())));
    assert_eq!(
        first.get("j"),
        Some(&Value::Json(serde_json::json!({"a": [1, 2]})))
    );
    assert_eq!(
        first.get("jb"),
        Some(&Value::Json(serde_json::json!({"b": null})))
    );
    assert_eq!(
        first.get("by"),
        Some(&Value::Bytes(vec![0xde, 0xad, 0xbe, 0xef]))
    );
    assert_eq!(first.get("num"), Some(&Value::Text("123.456".into())));
    assert_eq!(first.get("big"), Some(&Value::Text("x".repeat(10000))));
    let second = changes[1].3.as_ref().unwrap();
    assert_eq!(second.get("f8"), Some(&Value::Text("Infinity".into())));
    assert_eq!(second.get("f4"), Some(&Value::Text("-Infinity".into())));
    assert_eq!(second.get("t"), Some(&Value::Null));
    // UPDATE i4 = 7: the TOASTed column was not sent.
    let upd = changes[2].3.as_ref().unwrap();
    assert_eq!(upd.get("i4"), Some(&Value::Int(7)));
    assert_eq!(upd.get("big"), Some(&Value::Unchanged));
    // UPDATE id 2 → 3: a delete of 2 and an insert of 3.
    assert_eq!(changes[3].2.get("id"), Some(&Value::Int(2)));
    assert_eq!(changes[4].2.get("id"), Some(&Value::Int(3)));
    // REPLICA IDENTITY FULL: the old row is known.
    let full_upd_old = changes[8].4.as_ref().unwrap();
    assert_eq!(full_upd_old.get("v"), Some(&Value::Int(1)));
    // After ALTER TABLE ADD COLUMN: the new Relation message brings `extra`.
    let after_alter = changes[11].3.as_ref().unwrap();
    assert_eq!(after_alter.get("extra"), Some(&Value::Int(5)));
}

#[test]
fn truncations_and_mutations_of_captured_bytes_never_panic() {
    let mut decoded = 0usize;
    let mut refused = 0usize;
    let mut tally = |r: Result<Message, CdcError>| match r {
        Ok(_) => decoded += 1,
        Err(CdcError::Malformed { .. }) => refused += 1,
        Err(e) => panic!("wrong error kind: {e}"),
    };
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for bytes in vectors() {
        for cut in 0..bytes.len() {
            let r = decode(&bytes[..cut]);
            assert!(
                r.is_err(),
                "a truncated message must not decode: {cut}/{}",
                bytes.len()
            );
            tally(r);
        }
        for _ in 0..300 {
            let mut m = bytes.clone();
            for _ in 0..1 + next() % 4 {
                let i = (next() as usize) % m.len();
                match next() % 3 {
                    0 => m[i] = next() as u8,
                    1 => m[i] ^= 1 << (next() % 8),
                    _ => {
                        m.insert(i, next() as u8);
                    }
                }
            }
            tally(decode(&m));
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer).is_err(), "trailing bytes are refused");
    }
    assert!(
        refused > 1000 && decoded > 0,
        "{refused} refused, {decoded} decoded"
    );
}

fn tuple_value() -> impl Strategy<Value = TupleValue> {
    prop_oneof![
        Just(TupleValue::Null),
        Just(TupleValue::Unchanged),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(TupleValue::Text),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(TupleValue::Binary),
    ]
}

fn name() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_é ]{0,20}"
}

fn tuple() -> impl Strategy<Value = Vec<TupleValue>> {
    proptest::collection::vec(tuple_value(), 0..12)
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (any::<u64>(), any::<i64>(), any::<u32>()).prop_map(|(final_lsn, commit_time, xid)| {
            Message::Begin {
                final_lsn,
                commit_time,
                xid,
            }
        }),
        (any::<u64>(), any::<u64>(), any::<i64>()).prop_map(
            |(commit_lsn, end_lsn, commit_time)| Message::Commit {
                flags: 0,
                commit_lsn,
                end_lsn,
                commit_time
            }
        ),
        (
            any::<bool>(),
            any::<u64>(),
            name(),
            proptest::collection::vec(any::<u8>(), 0..30)
        )
            .prop_map(|(transactional, lsn, prefix, content)| Message::Message {
                transactional,
                lsn,
                prefix,
                content
            }),
        (any::<u64>(), name()).prop_map(|(lsn, name)| Message::Origin { lsn, name }),
        (
            any::<u32>(),
            name(),
            name(),
            prop_oneof![Just(b'd'), Just(b'n'), Just(b'f'), Just(b'i')],
            proptest::collection::vec((any::<bool>(), name(), any::<u32>(), any::<i32>()), 0..10)
        )
            .prop_map(
                |(oid, namespace, name, replica_identity, cols)| Message::Relation(Relation {
                    oid,
                    namespace,
                    name,
                    replica_identity,
                    columns: cols
                        .into_iter()
                        .map(|(key, name, type_oid, type_mod)| RelColumn {
                            key,
                            name,
                            type_oid,
                            type_mod
                        })
                        .collect()
                })
            ),
        (any::<u32>(), name(), name()).prop_map(|(oid, namespace, name)| Message::Type {
            oid,
            namespace,
            name
        }),
        (any::<u32>(), tuple()).prop_map(|(rel, new)| Message::Insert { rel, new }),
        (any::<u32>(), 0..3u8, tuple(), tuple()).prop_map(|(rel, kind, before, new)| {
            Message::Update {
                rel,
                key: (kind == 1).then(|| before.clone()),
                old: (kind == 2).then_some(before),
                new,
            }
        }),
        (any::<u32>(), any::<bool>(), tuple()).prop_map(|(rel, k, before)| Message::Delete {
            rel,
            key: k.then(|| before.clone()),
            old: (!k).then_some(before)
        }),
        (0..4u8, proptest::collection::vec(any::<u32>(), 0..8))
            .prop_map(|(options, rels)| Message::Truncate { options, rels }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn encode_then_decode_round_trips(msg in message()) {
        let bytes = encode(&msg);
        prop_assert_eq!(decode(&bytes).unwrap(), msg);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        match decode(&bytes) {
            Ok(msg) => prop_assert_eq!(decode(&encode(&msg)).unwrap(), msg),
            Err(e) => prop_assert!(matches!(e, CdcError::Malformed { .. }), "{}", e),
        }
    }

    #[test]
    fn arbitrary_bytes_after_a_valid_tag_never_panic(
        tag in prop_oneof![Just(b'B'), Just(b'C'), Just(b'M'), Just(b'O'), Just(b'R'), Just(b'Y'), Just(b'I'), Just(b'U'), Just(b'D'), Just(b'T')],
        rest in proptest::collection::vec(any::<u8>(), 0..120),
    ) {
        let mut bytes = vec![tag];
        bytes.extend(rest);
        if let Err(e) = decode(&bytes) {
            prop_assert!(matches!(e, CdcError::Malformed { .. }), "{}", e);
        }
    }
}
