//! The document layout: array members held element by element, commits that write only the
//! elements they change, documents of the earlier layout migrated on first write, and
//! inconsistent hashes refused. On a single node and on the cluster.

mod common;

use std::sync::Arc;

use electric_core::manager::DataManager;
use electric_core::store::{Commit, Store};
use electric_core::{CommitId, DeltaKind, Error};
use electric_redis::redis::cmd;
use electric_redis::RedisStore;
use electric_testkit::orderbook::OrderBook;
use rand::rngs::SmallRng;
use rand::SeedableRng;
use serde_json::{json, Map, Value};

/// The hash's field names, sorted.
async fn fields(store: &RedisStore, doc_key: &str) -> Vec<String> {
    let mut names: Vec<String> = store.query(cmd("HKEYS").arg(doc_key)).await.expect("hkeys");
    names.sort();
    names
}

/// What a fresh reader (its own store connection and manager) loads.
async fn reloaded<T: electric_core::manager::Document>(store: &RedisStore, id: &str) -> T {
    let reader = DataManager::<T>::builder(Arc::new(store.clone()), "lay", "docs")
        .origin("reader")
        .build()
        .expect("reader");
    reader
        .get(id)
        .await
        .expect("get")
        .expect("present")
        .value()
        .clone()
}

async fn order_books_are_split_and_updates_write_only_changed_elements(store: RedisStore) {
    let dyn_store: Arc<dyn Store> = Arc::new(store.clone());
    let w = DataManager::<OrderBook>::builder(dyn_store, "lay", "docs")
        .origin("writer")
        .build()
        .expect("writer");
    let id = "book";
    let _ = w.update(id, |b| b.seq += 1).await.expect("create");
    let doc_key = store.layout().doc_key(&w.key(id).expect("key"));
    let names = fields(&store, &doc_key).await;
    for member in ["bids", "asks"] {
        assert!(names.contains(&format!("#{member}")), "{names:?}");
        assert!(!names.contains(&format!(".{member}")), "{names:?}");
        let cells = names
            .iter()
            .filter(|n| n.starts_with('*') && n.ends_with(&format!(".{member}")))
            .count();
        assert_eq!(cells, electric_testkit::orderbook::LEVELS, "{names:?}");
    }
    for member in ["seq", "ts", "venue", "contract", "last_trade"] {
        assert!(names.contains(&format!(".{member}")), "{names:?}");
    }

    // The arguments of a five-leaf change: the changed elements, not the arrays.
    let current = w.cached(id).expect("cached");
    let mut next = current.value().clone();
    next.mutate(&mut SmallRng::seed_from_u64(3));
    let (ops, whole_members) = current.value().patch_to(&next);
    let Value::Object(tree) = serde_json::to_value(&next).expect("json") else {
        panic!("an object")
    };
    let commit = Commit {
        id: CommitId::random(),
        key: w.key(id).expect("key"),
        expected: current.stamp(),
        fields: Vec::new(),
        doc: Some(Arc::new(tree)),
        kind: DeltaKind::Patch,
        ops,
        origin: "writer".into(),
        ttl: None,
        digest: None,
    };
    let (_, args) = store.commit_args(&commit).expect("args");
    let sent: usize = args.iter().map(|a| a.len()).sum();
    let members: usize = whole_members
        .iter()
        .filter_map(|(_, t)| t.as_ref().map(|t| t.get().len()))
        .sum();
    assert!(members > 3000, "the touched members whole: {members} bytes");
    assert!(
        sent < 1000,
        "a five-leaf change sends {sent} bytes of arguments: {args:?}"
    );
    // ARGV 15 on (index 14 here) are the writes: three elements and two small members.
    let cells = args[14..].iter().filter(|a| a.as_ref() == "c").count();
    assert!((1..=3).contains(&cells), "{args:?}");
    assert!(!args[14..].iter().any(|a| a.as_ref() == "a"), "{args:?}");

    // Many updates through the manager; a fresh reader sees exactly the writer's book, and
    // the hash still holds one field per element.
    let mut rng = SmallRng::seed_from_u64(9);
    for _ in 0..50 {
        let _ = w.update(id, |b| b.mutate(&mut rng)).await.expect("update");
    }
    let want = w.cached(id).expect("cached").value().clone();
    assert_eq!(want.seq, 51);
    assert_eq!(reloaded::<OrderBook>(&store, id).await, want);
    assert_eq!(fields(&store, &doc_key).await.len(), names.len());
}

/// A document whose arrays change shape, type and presence; after each change a fresh
/// reader loads exactly what the writer holds, and no field of an earlier shape is left.
async fn arrays_grow_shrink_change_type_and_disappear(store: RedisStore) {
    let dyn_store: Arc<dyn Store> = Arc::new(store.clone());
    let w = DataManager::<Map<String, Value>>::builder(dyn_store, "lay", "docs")
        .origin("writer")
        .build()
        .expect("writer");
    let id = "shapes";
    let doc_key = store.layout().doc_key(&w.key(id).expect("key"));
    let rows = |n: usize| {
        Value::Array(
            (0..n)
                .map(|i| json!({"i": i, "pad": "x".repeat(40)}))
                .collect(),
        )
    };
    type Step = fn(&mut Map<String, Value>, &dyn Fn(usize) -> Value);
    let steps: Vec<(&str, Step)> = vec![
        ("create with rows", |d, rows| {
            d.insert("rows".into(), rows(10));
            d.insert("n".into(), json!(1));
        }),
        ("change one element", |d, _| d["rows"][3]["i"] = json!(33)),
        ("replace one element", |d, _| {
            d["rows"][4] = json!({"other": [1, 2]})
        }),
        ("grow", |d, rows| {
            if let Value::Array(a) = &mut d["rows"] {
                a.extend(rows(3).as_array().cloned().unwrap_or_default());
            }
        }),
        ("shrink", |d, _| {
            if let Value::Array(a) = &mut d["rows"] {
                a.truncate(4);
            }
        }),
        ("small change after shrinking", |d, _| {
            d["rows"][0]["i"] = json!(-1)
        }),
        ("to one element (stored whole)", |d, _| {
            if let Value::Array(a) = &mut d["rows"] {
                a.truncate(1);
            }
        }),
        ("back to many", |d, rows| d["rows"] = rows(6)),
        ("to a scalar", |d, _| d["rows"] = json!("flat")),
        ("a second split member", |d, rows| {
            d.insert("more".into(), rows(5));
            d["n"] = json!(2);
        }),
        ("first element becomes a scalar", |d, _| {
            d["more"][0] = json!(0)
        }),
        ("removed", |d, _| {
            d.remove("more");
        }),
        ("everything replaced", |d, rows| {
            d.clear();
            d.insert("fresh".into(), rows(7));
        }),
    ];
    for (what, step) in steps {
        let _ = w.update(id, |d| step(d, &rows)).await.expect(what);
        let want = w.cached(id).expect("cached").value().clone();
        assert_eq!(
            reloaded::<Map<String, Value>>(&store, id).await,
            want,
            "{what}"
        );
        // Exactly the fields of `want`: `.name` for a member held whole, `#name` and one cell per
        // element for one held element by element.
        let mut expected = vec!["__d".to_string(), "__e".into(), "__t".into(), "__v".into()];
        for (name, value) in &want {
            match electric_redis::layout::split(value) {
                Some(elements) => {
                    expected.push(format!("#{name}"));
                    expected.extend((0..elements.len()).map(|i| format!("*{i}.{name}")));
                }
                None => expected.push(format!(".{name}")),
            }
        }
        expected.sort();
        assert_eq!(fields(&store, &doc_key).await, expected, "{what}");
    }
}

/// A document written by the layout before element cells (every member whole) loads as it is,
/// and its first write moves the arrays it touches to cells, once.
async fn old_layout_documents_migrate_on_first_write(store: RedisStore) {
    let dyn_store: Arc<dyn Store> = Arc::new(store.clone());
    let w = DataManager::<OrderBook>::builder(dyn_store, "lay", "docs")
        .origin("writer")
        .build()
        .expect("writer");
    let id = "old";
    let key = w.key(id).expect("key");
    let doc_key = store.layout().doc_key(&key);
    let book = OrderBook::new(id, 5);
    let Value::Object(members) = serde_json::to_value(&book).expect("json") else {
        panic!("an object")
    };
    let mut hset = cmd("HSET");
    hset.arg(&doc_key)
        .arg("__v")
        .arg(7)
        .arg("__e")
        .arg("00000000000000ab")
        .arg("__t")
        .arg(1_700_000_000_000u64);
    for (name, value) in &members {
        hset.arg(format!(".{name}")).arg(value.to_string());
    }
    let _: u64 = store.query(&hset).await.expect("hset");
    assert_eq!(reloaded::<OrderBook>(&store, id).await, book);

    let before = store
        .stats()
        .members_migrated
        .load(std::sync::atomic::Ordering::Relaxed);
    let mut rng = SmallRng::seed_from_u64(1);
    let v = w
        .update(id, |b| b.mutate(&mut rng))
        .await
        .expect("first write")
        .version();
    assert_eq!(v, 8);
    let migrated = store
        .stats()
        .members_migrated
        .load(std::sync::atomic::Ordering::Relaxed)
        - before;
    assert_eq!(migrated, 2, "bids and asks are moved to cells");
    let names = fields(&store, &doc_key).await;
    assert!(names.contains(&"#bids".to_string()) && !names.contains(&".bids".to_string()));
    assert!(names.contains(&"#asks".to_string()) && !names.contains(&".asks".to_string()));
    // Later writes find them in cells.
    for _ in 0..5 {
        let _ = w.update(id, |b| b.mutate(&mut rng)).await.expect("update");
    }
    assert_eq!(
        store
            .stats()
            .members_migrated
            .load(std::sync::atomic::Ordering::Relaxed)
            - before,
        2
    );
    let want = w.cached(id).expect("cached").value().clone();
    assert_eq!(reloaded::<OrderBook>(&store, id).await, want);
}

/// Hashes no writer of ours leaves are refused on load with an error naming the member.
async fn inconsistent_hashes_are_refused(store: RedisStore) {
    let key = electric_core::Key::new("lay", "docs", "broken").expect("key");
    let doc_key = store.layout().doc_key(&key);
    let stamp = [
        "__v",
        "3",
        "__e",
        "00000000000000ab",
        "__t",
        "1700000000000",
    ];
    let cases: [(&str, &[&str]); 4] = [
        (
            "both whole and split",
            &[".a", "[1]", "#a", "1", "*0.a", "{}"],
        ),
        ("a cell without its count", &["*0.a", "{}"]),
        ("a missing cell", &["#a", "2", "*0.a", "{}"]),
        ("a bad cell name", &["#a", "1", "*x.a", "{}"]),
    ];
    for (what, extra) in cases {
        let _: u64 = store.query(cmd("DEL").arg(&doc_key)).await.expect("del");
        let _: u64 = store
            .query(cmd("HSET").arg(&doc_key).arg(&stamp[..]).arg(extra))
            .await
            .expect("hset");
        match store.load(&key).await {
            Err(Error::Malformed { reason, .. }) => {
                assert!(
                    reason.contains("\"a\"") || reason.contains("*x.a"),
                    "{what}: {reason}"
                )
            }
            other => panic!("{what}: expected Malformed, got {other:?}"),
        }
    }
}

macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod single {
            use super::*;
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let Some(store) = common::single(64).await else { return };
                common::with_cleanup(store, super::$name).await;
            })*
        }
        mod cluster {
            use super::*;
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let Some(store) = common::cluster(64).await else { return };
                common::with_cleanup(store, super::$name).await;
            })*
        }
    };
}

on_both!(
    order_books_are_split_and_updates_write_only_changed_elements,
    arrays_grow_shrink_change_type_and_disappear,
    old_layout_documents_migrate_on_first_write,
    inconsistent_hashes_are_refused,
);
