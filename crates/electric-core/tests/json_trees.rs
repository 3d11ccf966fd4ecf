//! The JSON trees a manager keeps for hot documents: they change no result, never let a local
//! update drop members the type does not know, and stay within their bound.

use std::collections::BTreeMap;
use std::sync::Arc;

use electric_core::manager::{DataManager, Document};
use electric_core::store::{Commit, CommitOutcome, Store};
use electric_core::{DeltaKind, Key, MemoryStore, UpdateOutcome};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Book {
    n: u64,
    levels: Vec<(f64, u32)>,
    names: BTreeMap<String, String>,
    note: Option<String>,
    pad: String,
}

impl Document for Book {
    fn empty(_: &Key) -> Option<Self> {
        Some(Book {
            levels: (0..20).map(|i| (i as f64 * 0.5, i)).collect(),
            pad: "x".repeat(300),
            ..Book::default()
        })
    }
}

fn manager(store: &Arc<MemoryStore>, tree_bytes: u64) -> DataManager<Book> {
    DataManager::builder(store.clone() as Arc<dyn Store>, "p", "books")
        .json_cache_bytes(tree_bytes)
        .build()
        .unwrap()
}

fn mutate(b: &mut Book, rng: &mut SmallRng) {
    b.n += 1;
    match rng.gen_range(0..5) {
        0 => {
            let i = rng.gen_range(0..b.levels.len());
            b.levels[i].1 += 1;
        }
        1 => b.levels.push((rng.gen(), rng.gen())),
        2 if b.levels.len() > 1 => {
            b.levels.pop();
        }
        3 => {
            b.names.insert(
                format!("k{}", rng.gen_range(0..6)),
                format!("{}", rng.gen::<u16>()),
            );
        }
        _ => b.note = (rng.gen_bool(0.5)).then(|| "note".to_string()),
    }
}

/// The same updates through a manager that keeps trees and one that keeps none commit the same
/// deltas and end in the same documents.
#[tokio::test]
async fn kept_trees_change_no_delta() {
    let (s1, s2) = (Arc::new(MemoryStore::new()), Arc::new(MemoryStore::new()));
    let (with, without) = (manager(&s1, 1 << 20), manager(&s2, 0));
    let (mut r1, mut r2) = (SmallRng::seed_from_u64(5), SmallRng::seed_from_u64(5));
    for i in 0..400 {
        let id = format!("b{}", i % 7);
        let a = with.update(&id, |b| mutate(b, &mut r1)).await.unwrap();
        let b = without.update(&id, |b| mutate(b, &mut r2)).await.unwrap();
        match (a, b) {
            (UpdateOutcome::Changed { delta: a, .. }, UpdateOutcome::Changed { delta: b, .. }) => {
                assert_eq!((a.kind, a.version), (b.kind, b.version), "update {i}");
                assert_eq!(a.ops, b.ops, "update {i}");
            }
            (a, b) => assert_eq!(a.version(), b.version(), "update {i}"),
        }
    }
    assert!(with.stats().json_trees > 0);
    assert_eq!(without.stats().json_trees, 0);
    for i in 0..7 {
        let id = format!("b{i}");
        let key = with.key(&id).unwrap();
        let (d1, d2) = (
            s1.load(&key).await.unwrap().unwrap(),
            s2.load(&key).await.unwrap().unwrap(),
        );
        assert_eq!(d1.doc.to_map().unwrap(), d2.doc.to_map().unwrap());
        assert_eq!(
            *with.cached(&id).unwrap(),
            d1.doc.deserialize::<Book>().unwrap()
        );
    }
}

/// A remote delta can add a member `Book` does not know; the tree it patched holds it, but a
/// local update must not diff against that tree, or it would remove the member.
#[tokio::test]
async fn a_local_update_keeps_members_the_type_does_not_know() {
    let store = Arc::new(MemoryStore::new());
    let m = manager(&store, 1 << 20);
    let _ = m.update("b", |b| b.n = 1).await.unwrap();
    let key = m.key("b").unwrap();
    let stamp = m.cached("b").unwrap().stamp();
    let CommitOutcome::Committed(delta) = store
        .commit(&Commit {
            key: key.clone(),
            expected: stamp,
            fields: vec![Commit::member("extra", &json!({"from": "a newer writer"})).unwrap()],
            doc: None,
            kind: DeltaKind::Patch,
            ops: serde_json::from_value(json!([
                {"op": "add", "path": "/extra", "value": {"from": "a newer writer"}}
            ]))
            .unwrap(),
            origin: "newer".into(),
            ttl: None,
            id: electric_core::CommitId::random(),
            digest: None,
        })
        .await
        .unwrap()
    else {
        panic!("the foreign commit conflicted");
    };
    m.apply_remote(delta).await;
    assert_eq!(m.stats().applied, 1);
    let UpdateOutcome::Changed { delta, .. } = m.update("b", |b| b.n = 2).await.unwrap() else {
        panic!("unchanged");
    };
    assert_eq!(delta.version, 3);
    let doc = store.load(&key).await.unwrap().unwrap();
    assert_eq!(
        doc.doc.value("extra").unwrap(),
        Some(json!({"from": "a newer writer"})),
        "ops were {:?}",
        delta.ops
    );
}

/// Kept trees stay within `json_cache_bytes` (each weighed at ten times its document's JSON
/// size); dropping a document drops its tree.
#[tokio::test]
async fn kept_trees_are_bounded() {
    let store = Arc::new(MemoryStore::new());
    let json_len = serde_json::to_vec(&Book::empty(&Key::new("p", "books", "b").unwrap()))
        .unwrap()
        .len() as u64;
    // Room for three trees, not four.
    let m = manager(&store, json_len * 10 * 3 + json_len * 5);
    for round in 0..3 {
        for i in 0..10 {
            let _ = m.update(&format!("b{i}"), |b| b.n += 1).await.unwrap();
            assert!(m.stats().json_trees <= 3, "round {round}: {:?}", m.stats());
        }
    }
    assert!(m.stats().json_trees > 0);
    assert_eq!(m.stats().cached, 10, "trees are bounded, not the documents");
    for i in 0..10 {
        m.remove_from_cache(&format!("b{i}"));
    }
    assert_eq!(m.stats().json_trees, 0);
    // Updates still work after their trees were dropped.
    for i in 0..10 {
        let _ = m.update(&format!("b{i}"), |b| b.n += 100).await.unwrap();
        assert_eq!(m.get(&format!("b{i}")).await.unwrap().unwrap().n, 103);
    }
}

/// A document that grows through remote deltas has its tree re-weighed, so the byte bound holds:
/// once the tree outweighs the whole cache it is no longer kept.
#[tokio::test]
async fn trees_are_reweighed_as_documents_grow() {
    let store = Arc::new(MemoryStore::new());
    let writer = manager(&store, 0);
    let _ = writer.update("b", |b| b.n = 1).await.unwrap();
    let json_len = |b: &Book| serde_json::to_vec(b).unwrap().len() as u64;
    let small = json_len(&writer.cached("b").unwrap());
    // Room for the tree of the small document, not for one of 20 times its size.
    let replica = manager(&store, small * 10 * 4);
    let _ = replica.get("b").await.unwrap();
    let mut deltas = Vec::new();
    for i in 0..20 {
        if let UpdateOutcome::Changed { delta, .. } = writer
            .update("b", |b| {
                b.n += 1;
                b.names
                    .insert(format!("k{i:02}"), "v".repeat(small as usize));
            })
            .await
            .unwrap()
        {
            deltas.push(delta);
        }
    }
    replica.apply_remote(deltas[0].clone()).await;
    assert_eq!(replica.stats().json_trees, 1, "{:?}", replica.stats());
    for d in &deltas[1..] {
        replica.apply_remote(d.clone()).await;
    }
    let big = json_len(&replica.cached("b").unwrap());
    assert!(big > small * 10, "the document grew: {small} -> {big}");
    assert_eq!(replica.stats().applied, 20);
    assert_eq!(
        replica.stats().json_trees,
        0,
        "a tree of {big} JSON bytes does not fit in {} bytes",
        small * 40
    );
}

/// Documents leaving the cache by eviction or idle flush take their trees with them.
#[tokio::test]
async fn evicted_and_flushed_documents_drop_their_trees() {
    let store = Arc::new(MemoryStore::new());
    let m = DataManager::<Book>::builder(store.clone() as Arc<dyn Store>, "p", "books")
        .max_entries(3)
        .json_cache_bytes(1 << 20)
        .build()
        .unwrap();
    for i in 0..10 {
        let _ = m.update(&format!("b{i}"), |b| b.n = i).await.unwrap();
    }
    let stats = m.stats();
    assert!(stats.cached <= 3, "{stats:?}");
    assert!(
        stats.json_trees <= stats.cached,
        "trees of evicted documents linger: {stats:?}"
    );
    assert!(stats.json_trees > 0, "{stats:?}");
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    assert_eq!(m.flush_idle(std::time::Duration::ZERO), stats.cached);
    assert_eq!(m.stats().json_trees, 0, "{:?}", m.stats());
}

/// A document the tree-diffing serializer leaves to serde_json (a map with integer keys) still
/// updates correctly: every delta turns the previous document into the next, and the store
/// holds what the cache holds.
#[tokio::test]
async fn documents_with_integer_map_keys_take_the_slow_path_correctly() {
    #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
    struct Tally {
        n: u64,
        by_id: BTreeMap<u32, u32>,
    }
    impl Document for Tally {
        fn empty(_: &Key) -> Option<Self> {
            Some(Tally::default())
        }
    }
    let store = Arc::new(MemoryStore::new());
    let m: DataManager<Tally> = DataManager::builder(store.clone() as Arc<dyn Store>, "p", "t")
        .json_cache_bytes(1 << 20)
        .build()
        .unwrap();
    let mut rng = SmallRng::seed_from_u64(9);
    let mut prev = serde_json::to_value(Tally::default()).unwrap();
    for i in 0..200 {
        let (id, by) = (rng.gen_range(0..8u32), rng.gen_range(0..3u32));
        let outcome = m
            .update("t", |t| {
                t.n += 1;
                *t.by_id.entry(id).or_default() += by;
                if by == 2 {
                    t.by_id.remove(&((id + 1) % 8));
                }
            })
            .await
            .unwrap();
        let UpdateOutcome::Changed { delta, .. } = outcome else {
            panic!("update {i} changed nothing");
        };
        let now = serde_json::to_value(&*m.cached("t").unwrap()).unwrap();
        if delta.kind == DeltaKind::Patch {
            electric_core::patch::apply(&mut prev, &delta.ops).unwrap();
            assert_eq!(prev, now, "update {i}");
        }
        prev = now;
    }
    let snap = store.load(&m.key("t").unwrap()).await.unwrap().unwrap();
    assert_eq!(
        snap.doc.deserialize::<Tally>().unwrap(),
        *m.cached("t").unwrap()
    );
}

/// A document whose type is an enum at the top level changes variant: the old variant's member
/// must go from the store (a root replaced whole names no member, so the tree-diffing
/// serializer leaves this case to `diff`).
#[tokio::test]
async fn a_top_level_enum_changing_variant_leaves_nothing_behind() {
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    enum Doc {
        A { x: u32 },
        B { y: u32 },
    }
    impl Document for Doc {
        fn empty(_: &Key) -> Option<Self> {
            Some(Doc::A { x: 0 })
        }
    }
    let store = Arc::new(MemoryStore::new());
    let m: DataManager<Doc> = DataManager::builder(store.clone() as Arc<dyn Store>, "p", "e")
        .json_cache_bytes(1 << 20)
        .build()
        .unwrap();
    let _ = m.update("d", |d| *d = Doc::A { x: 1 }).await.unwrap();
    let _ = m.update("d", |d| *d = Doc::B { y: 2 }).await.unwrap();
    let snap = store.load(&m.key("d").unwrap()).await.unwrap().unwrap();
    assert_eq!(snap.doc.deserialize::<Doc>().unwrap(), Doc::B { y: 2 });
    assert_eq!(*m.cached("d").unwrap(), Doc::B { y: 2 });
}
