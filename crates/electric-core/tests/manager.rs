//! DataManager behaviour on MemoryStore: reads, writes, conflicts, repairs and bad input.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use electric_core::manager::{ChangeCause, DataManager, Document, RepairReason};
use electric_core::store::{Changes, Commit, CommitOutcome, Snapshot, Store, Subscription};
use electric_core::{
    CommitId, Delta, DeltaKind, Error, Key, MemoryStore, Result, SectionId, Stamp, UpdateOutcome,
    Version,
};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Counter {
    n: u64,
    #[serde(default)]
    tags: Vec<String>,
    /// Makes the document large enough that small changes travel as patches, not snapshots.
    #[serde(default)]
    pad: String,
}

impl Document for Counter {
    fn empty(_: &Key) -> Option<Self> {
        Some(Counter {
            pad: "x".repeat(200),
            ..Counter::default()
        })
    }
}

fn manager(store: &Arc<MemoryStore>) -> DataManager<Counter> {
    DataManager::builder(store.clone() as Arc<dyn Store>, "p", "counters")
        .build()
        .unwrap()
}

/// Counts loads so single flight can be checked.
struct CountingStore {
    inner: MemoryStore,
    loads: AtomicUsize,
    always_conflict: bool,
}

#[async_trait]
impl Store for CountingStore {
    async fn load(&self, key: &Key) -> Result<Option<Snapshot>> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await;
        self.inner.load(key).await
    }
    async fn commit(&self, commit: &Commit) -> Result<CommitOutcome> {
        if self.always_conflict {
            let actual = self.inner.stamps(std::slice::from_ref(&commit.key)).await?[0];
            return Ok(CommitOutcome::Conflict { actual });
        }
        self.inner.commit(commit).await
    }
    async fn changes_since(&self, key: &Key, after: Version) -> Result<Changes> {
        self.inner.changes_since(key, after).await
    }
    async fn stamps(&self, keys: &[Key]) -> Result<Vec<Option<Stamp>>> {
        self.inner.stamps(keys).await
    }
    async fn delete_with_id(&self, key: &Key, origin: &str, id: CommitId) -> Result<bool> {
        self.inner.delete_with_id(key, origin, id).await
    }
    async fn expire(&self, key: &Key, ttl: Duration) -> Result<bool> {
        self.inner.expire(key, ttl).await
    }
    async fn ttl(&self, key: &Key) -> Result<Option<Duration>> {
        self.inner.ttl(key).await
    }
    async fn subscribe(&self, section: &SectionId) -> Result<Subscription> {
        self.inner.subscribe(section).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_load_once() {
    let store = Arc::new(CountingStore {
        inner: MemoryStore::new(),
        loads: AtomicUsize::new(0),
        always_conflict: false,
    });
    let writer = DataManager::<Counter>::builder(Arc::new(store.inner.clone()), "p", "c")
        .build()
        .unwrap();
    let _ = writer.update("k", |c| c.n = 7).await.unwrap();
    let m = DataManager::<Counter>::builder(store.clone(), "p", "c")
        .build()
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let m = m.clone();
        tasks.push(tokio::spawn(
            async move { m.get("k").await.unwrap().unwrap().n },
        ));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 7);
    }
    assert_eq!(store.loads.load(Ordering::SeqCst), 1);
    assert_eq!(m.stats().loads, 1);
}

#[tokio::test]
async fn update_creates_changes_and_reports_unchanged() {
    let store = Arc::new(MemoryStore::new());
    let m = manager(&store);
    let mut events = m.changes();
    assert!(m.get("a").await.unwrap().is_none());
    assert_eq!(m.get_or_default("a").await.unwrap().n, 0);
    let first = m.update("a", |c| c.n += 1).await.unwrap();
    assert!(matches!(first, UpdateOutcome::Changed { version: 1, .. }));
    let second = m.update("a", |c| c.n += 1).await.unwrap();
    let UpdateOutcome::Changed { version: 2, delta } = second else {
        panic!("expected a change")
    };
    assert_eq!(delta.kind, DeltaKind::Patch);
    assert_eq!(delta.base, 1);
    assert!(matches!(
        m.update("a", |_| {}).await.unwrap(),
        UpdateOutcome::Unchanged { version: 2 }
    ));
    let doc = m.get("a").await.unwrap().unwrap();
    assert_eq!((doc.n, doc.version()), (2, 2));
    let snap = store.load(&m.key("a").unwrap()).await.unwrap().unwrap();
    assert_eq!(snap.doc.value("n").unwrap(), Some(json!(2)));
    let e = events.next().await.unwrap().unwrap();
    assert!(matches!(e.cause, ChangeCause::Local(_)));
    assert_eq!(e.stamp.unwrap().version, 1);
}

#[tokio::test]
async fn large_patches_go_as_snapshots() {
    let store = Arc::new(MemoryStore::new());
    let m = manager(&store);
    let _ = m.update("a", |c| c.n = 1).await.unwrap();
    let out = m
        .update("a", |c| {
            c.tags = (0..50).map(|i| format!("tag{i}")).collect()
        })
        .await
        .unwrap();
    let UpdateOutcome::Changed { delta, .. } = out else {
        panic!()
    };
    assert_eq!(delta.kind, DeltaKind::Snapshot);
    delta.validate().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_managers_on_one_store_lose_no_update() {
    let store = Arc::new(MemoryStore::new());
    let (a, b) = (manager(&store), manager(&store));
    let mut tasks = Vec::new();
    for m in [a.clone(), b.clone(), a.clone(), b.clone()] {
        tasks.push(tokio::spawn(async move {
            for _ in 0..50 {
                let _ = m.update("shared", |c| c.n += 1).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let snap = store
        .load(&a.key("shared").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(snap.doc.value("n").unwrap(), Some(json!(200)));
    assert!(a.stats().conflicts + b.stats().conflicts > 0 || snap.stamp.version == 200);
}

#[tokio::test(start_paused = true)]
async fn conflict_error_after_bounded_attempts() {
    let store = Arc::new(CountingStore {
        inner: MemoryStore::new(),
        loads: AtomicUsize::new(0),
        always_conflict: true,
    });
    let m = DataManager::<Counter>::builder(store.clone(), "p", "c")
        .max_attempts(4)
        .build()
        .unwrap();
    let mut runs = 0;
    let err = m
        .update("k", |c| {
            runs += 1;
            c.n += 1
        })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Conflict { .. }), "{err}");
    assert!(err.is_retryable());
    assert_eq!(runs, 4, "the closure re-runs once per attempt");
    assert_eq!(m.stats().conflicts, 4);
}

#[tokio::test]
async fn get_at_least_reads_your_writes_across_managers() {
    let store = Arc::new(MemoryStore::new());
    let (a, b) = (manager(&store), manager(&store));
    let _ = a.update("k", |c| c.n = 1).await.unwrap();
    assert_eq!(b.get("k").await.unwrap().unwrap().n, 1);
    let mut v = 0;
    for i in 2..=4 {
        v = a.update("k", |c| c.n = i).await.unwrap().version();
    }
    assert_eq!(
        b.get("k").await.unwrap().unwrap().n,
        1,
        "b has no sync: stale"
    );
    let doc = b.get_at_least("k", v).await.unwrap();
    assert_eq!((doc.n, doc.version()), (4, 4));
    let err = b.get_at_least("k", 99).await.unwrap_err();
    assert!(matches!(
        err,
        Error::VersionUnavailable {
            wanted: 99,
            available: 4,
            ..
        }
    ));
    assert!(matches!(
        b.get_at_least("nope", 1).await,
        Err(Error::NotFound { .. })
    ));
}

/// Applies `a`'s delta to `b` the way the sync service would.
async fn deliver(b: &DataManager<Counter>, delta: &Arc<Delta>) {
    b.apply_remote(delta.clone()).await;
}

#[tokio::test]
async fn remote_deltas_apply_ignore_duplicates_and_repair_gaps() {
    let store = Arc::new(MemoryStore::builder().log_capacity(3).build().unwrap());
    let (a, b) = (manager(&store), manager(&store));
    let mut deltas = Vec::new();
    for i in 1..=3 {
        if let UpdateOutcome::Changed { delta, .. } = a.update("k", |c| c.n = i).await.unwrap() {
            deltas.push(delta);
        }
    }
    // Cold: b has nothing cached, so deltas are ignored.
    deliver(&b, &deltas[0]).await;
    assert_eq!(b.stats().ignored_cold, 1);
    assert_eq!(b.get("k").await.unwrap().unwrap().version(), 3);
    // Duplicate.
    deliver(&b, &deltas[2]).await;
    assert_eq!(b.stats().duplicates, 1);
    // In order.
    for i in 4..=5 {
        if let UpdateOutcome::Changed { delta, .. } = a.update("k", |c| c.n = i).await.unwrap() {
            deltas.push(delta);
        }
    }
    deliver(&b, &deltas[3]).await;
    assert_eq!(b.cached("k").unwrap().n, 4);
    // Gap: skip 6, deliver 7 -> repaired from the log.
    for i in 6..=7 {
        if let UpdateOutcome::Changed { delta, .. } = a.update("k", |c| c.n = i).await.unwrap() {
            deltas.push(delta);
        }
    }
    deliver(&b, &deltas[6]).await;
    assert_eq!(b.cached("k").unwrap().n, 7);
    assert_eq!(b.stats().repairs.get(RepairReason::Gap), 1);
    // Trimmed: 5 more writes with a log of 3, then deliver only the last.
    for i in 8..=12 {
        if let UpdateOutcome::Changed { delta, .. } = a.update("k", |c| c.n = i).await.unwrap() {
            deltas.push(delta);
        }
    }
    deliver(&b, deltas.last().unwrap()).await;
    assert_eq!(b.cached("k").unwrap().n, 12);
    assert_eq!(b.stats().repairs.get(RepairReason::Trimmed), 1);
}

#[tokio::test]
async fn new_epoch_reloads_instead_of_patching_stale_state() {
    let store = Arc::new(MemoryStore::new());
    let (a, b) = (manager(&store), manager(&store));
    let _ = a.update("k", |c| c.n = 100).await.unwrap();
    assert_eq!(b.get("k").await.unwrap().unwrap().n, 100);
    store.flush_all();
    a.remove_from_cache("k");
    let UpdateOutcome::Changed { delta, .. } = a.update("k", |c| c.n += 1).await.unwrap() else {
        panic!()
    };
    assert_eq!(delta.version, 1, "fresh lifetime");
    assert_eq!(
        delta.kind,
        DeltaKind::Snapshot,
        "a create carries the whole document"
    );
    let UpdateOutcome::Changed { delta, .. } = a.update("k", |c| c.n += 1).await.unwrap() else {
        panic!()
    };
    assert_eq!(delta.kind, DeltaKind::Patch);
    deliver(&b, &delta).await;
    let doc = b.cached("k").unwrap();
    assert_eq!(doc.n, 2, "reloaded, not patched onto the old 100");
    assert_eq!(doc.stamp(), Some(delta.stamp()));
    assert_eq!(b.stats().repairs.get(RepairReason::Epoch), 1);
}

#[tokio::test]
async fn a_patch_that_does_not_apply_reloads_and_reports() {
    let store = Arc::new(MemoryStore::new());
    let (a, b) = (manager(&store), manager(&store));
    let _ = a.update("k", |c| c.n = 1).await.unwrap();
    let _ = b.get("k").await.unwrap();
    let UpdateOutcome::Changed { delta, .. } = a.update("k", |c| c.n = 2).await.unwrap() else {
        panic!()
    };
    let mut errors = b.sync_errors();
    let mut bad = (*delta).clone();
    bad.ops =
        serde_json::from_value(json!([{"op": "replace", "path": "/missing/deep", "value": 1}]))
            .unwrap();
    deliver(&b, &Arc::new(bad)).await;
    assert_eq!(b.cached("k").unwrap().n, 2, "reloaded from the store");
    assert_eq!(b.stats().repairs.get(RepairReason::ApplyFailed), 1);
    let e = errors.next().await.unwrap().unwrap();
    assert_eq!(e.reason, Some(RepairReason::ApplyFailed));
}

#[tokio::test]
async fn foreign_data_of_the_wrong_type_is_an_error_not_a_stale_cache() {
    let store = Arc::new(MemoryStore::new());
    let m = manager(&store);
    let _ = m.update("k", |c| c.n = 1).await.unwrap();
    let key = m.key("k").unwrap();
    let stamp = store.stamps(std::slice::from_ref(&key)).await.unwrap()[0];
    // A foreign writer stores a string where Counter has a number.
    let CommitOutcome::Committed(delta) = store
        .commit(&Commit {
            key: key.clone(),
            expected: stamp,
            fields: vec![Commit::member("n", "seven").unwrap()],
            doc: None,
            kind: DeltaKind::Patch,
            ops: serde_json::from_value(json!([{"op":"replace","path":"/n","value":"seven"}]))
                .unwrap(),
            origin: "foreign".into(),
            ttl: None,
            id: electric_core::CommitId::random(),
            digest: None,
        })
        .await
        .unwrap()
    else {
        panic!()
    };
    m.apply_remote(delta).await;
    assert!(m.cached("k").is_none(), "no stale value kept");
    match m.get("k").await {
        Err(Error::Malformed { reason, .. }) => {
            assert!(reason.contains("p:counters:k"), "names the key: {reason}");
            assert!(reason.contains("\"n\""), "names the member: {reason}");
        }
        other => panic!("expected malformed, got {other:?}"),
    }
    assert!(m.stats().sync_errors >= 1);
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Priced {
    qty: f64,
    levels: Vec<f64>,
    /// Integer map keys make `update` take its slower, serde_json path.
    by_id: std::collections::BTreeMap<u32, f64>,
}

impl Document for Priced {
    fn empty(_: &Key) -> Option<Self> {
        Some(Priced::default())
    }
}

/// NaN and the infinities are refused before anything is written, on the fast path and on the
/// slow one, naming where the number is; the writer's cache and every reader keep working.
#[tokio::test]
async fn numbers_json_cannot_hold_are_refused_before_writing() {
    let store = Arc::new(MemoryStore::new());
    let writer = DataManager::<Priced>::builder(store.clone(), "p", "priced")
        .build()
        .unwrap();
    let reader = DataManager::<Priced>::builder(store.clone(), "p", "priced")
        .build()
        .unwrap();
    let first = writer
        .update("k", |p| {
            p.qty = 1.5;
            p.levels = vec![1.0, 2.0];
        })
        .await
        .unwrap();
    assert_eq!(first.version(), 1);
    type Change = fn(&mut Priced);
    let cases: Vec<(Change, &str)> = vec![
        (|p| p.qty = f64::NAN, "/qty"),
        (|p| p.levels[1] = f64::INFINITY, "/levels/1"),
        (|p| p.levels.push(f64::NEG_INFINITY), "/levels/2"),
        (
            |p| {
                p.by_id.insert(7, f64::NAN);
            },
            "/by_id/7",
        ),
    ];
    for (change, path) in cases {
        let err = writer.update("k", change).await.unwrap_err();
        match &err {
            Error::NonFiniteNumber { path: p, key, .. } => {
                assert_eq!(p, path);
                assert_eq!(key.id(), "k");
            }
            other => panic!("expected non-finite for {path}, got {other}"),
        }
        assert!(!err.is_retryable());
        let cached = writer.cached("k").unwrap();
        assert_eq!((cached.version(), cached.qty), (1, 1.5), "cache unchanged");
        let snap = store
            .load(&writer.key("k").unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(snap.stamp.version, 1, "nothing written");
    }
    // The writer goes on from its unchanged cache, the slow path included.
    let next = writer
        .update("k", |p| {
            p.qty = 2.5;
            p.by_id.insert(7, 0.5);
        })
        .await
        .unwrap();
    assert_eq!(next.version(), 2);
    let seen = reader.get_at_least("k", 2).await.unwrap();
    assert_eq!((seen.qty, seen.by_id.get(&7)), (2.5, Some(&0.5)));
}

/// A member `T` cannot read (a foreign writer stored `null` for a number) is `Malformed`,
/// naming the key and the member, for reads and updates of that key; other keys keep working.
#[tokio::test]
async fn a_member_the_type_cannot_read_is_malformed_and_other_keys_keep_working() {
    let store = Arc::new(MemoryStore::new());
    let m = DataManager::<Priced>::builder(store.clone(), "p", "priced")
        .build()
        .unwrap();
    for id in ["bad", "good"] {
        let _ = m.update(id, |p| p.qty = 1.0).await.unwrap();
    }
    let key = m.key("bad").unwrap();
    let stamp = store.stamps(std::slice::from_ref(&key)).await.unwrap()[0];
    let _ = store
        .commit(&Commit {
            key: key.clone(),
            expected: stamp,
            fields: vec![Commit::member("qty", &serde_json::Value::Null).unwrap()],
            doc: None,
            kind: DeltaKind::Patch,
            ops: serde_json::from_value(json!([{"op": "replace", "path": "/qty", "value": null}]))
                .unwrap(),
            origin: "foreign".into(),
            ttl: None,
            id: electric_core::CommitId::random(),
            digest: None,
        })
        .await
        .unwrap();
    let fresh = DataManager::<Priced>::builder(store.clone(), "p", "priced")
        .build()
        .unwrap();
    let check = |r: Result<()>| match r {
        Err(Error::Malformed { what, reason }) => {
            assert_eq!(what, "document");
            assert!(reason.contains("p:priced:bad"), "{reason}");
            assert!(reason.contains("member \"qty\""), "{reason}");
        }
        other => panic!("expected malformed, got {other:?}"),
    };
    check(fresh.get("bad").await.map(|_| ()));
    m.remove_from_cache("bad");
    check(m.update("bad", |p| p.qty = 3.0).await.map(|_| ()));
    assert!(fresh.cached("bad").is_none());
    assert_eq!(fresh.get("good").await.unwrap().unwrap().qty, 1.0);
    assert_eq!(
        m.update("good", |p| p.qty = 4.0).await.unwrap().version(),
        2
    );
}

#[derive(Clone, Serialize, Deserialize)]
struct NotAnObject(Vec<u32>);
impl Document for NotAnObject {
    fn empty(_: &Key) -> Option<Self> {
        Some(NotAnObject(vec![]))
    }
}

#[derive(Clone, Serialize, Deserialize)]
struct NoEmpty {
    n: u64,
}
impl Document for NoEmpty {}

#[tokio::test]
async fn bad_input_is_a_typed_error() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let m = DataManager::<NotAnObject>::builder(store.clone(), "p", "s")
        .build()
        .unwrap();
    let err = m.update("k", |v| v.0.push(1)).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::NotAnObject {
                found: "an array",
                ..
            }
        ),
        "{err}"
    );
    let c = DataManager::<Counter>::builder(store.clone(), "p", "s")
        .max_document_bytes(64)
        .build()
        .unwrap();
    for bad in ["a:b", "", "x y", "{tag}"] {
        assert!(
            matches!(c.get(bad).await, Err(Error::InvalidKey { .. })),
            "{bad:?}"
        );
        assert!(matches!(
            c.update(bad, |_| {}).await,
            Err(Error::InvalidKey { .. })
        ));
    }
    let err = c
        .update("big", |v| v.tags = vec!["x".repeat(100)])
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::DocumentTooLarge { limit: 64, .. }),
        "{err}"
    );
    assert!(c.get("big").await.unwrap().is_none(), "nothing written");
    let n = DataManager::<NoEmpty>::builder(store.clone(), "p", "s")
        .build()
        .unwrap();
    assert!(matches!(
        n.update("x", |v| v.n += 1).await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        n.get_or_default("x").await,
        Err(Error::NotFound { .. })
    ));
    for bad_config in [
        DataManager::<Counter>::builder(store.clone(), "p", "s").max_entries(0),
        DataManager::<Counter>::builder(store.clone(), "p", "s").max_attempts(0),
        DataManager::<Counter>::builder(store.clone(), "p", "s").snapshot_ratio(f64::NAN),
        DataManager::<Counter>::builder(store.clone(), "p:x", "s"),
    ] {
        assert!(bad_config.build().is_err());
    }
}

#[tokio::test]
async fn cache_is_bounded_and_flushes_idle_entries() {
    let store = Arc::new(MemoryStore::new());
    let writer = manager(&store);
    for i in 0..50 {
        let _ = writer.update(&format!("k{i}"), |c| c.n = i).await.unwrap();
    }
    let m = DataManager::<Counter>::builder(store.clone() as Arc<dyn Store>, "p", "counters")
        .max_entries(10)
        .build()
        .unwrap();
    for i in 0..50 {
        assert_eq!(m.get(&format!("k{i}")).await.unwrap().unwrap().n, i);
    }
    let stats = m.stats();
    assert!(stats.cached <= 10, "{} cached", stats.cached);
    assert_eq!(stats.evicted, 40);
    assert!(
        m.cached("k49").is_some(),
        "the newest entry is never the victim"
    );
}

#[tokio::test(start_paused = true)]
async fn idle_entries_are_flushed_by_age() {
    let store = Arc::new(MemoryStore::new());
    let m = manager(&store);
    let _ = m.update("old", |c| c.n = 1).await.unwrap();
    tokio::time::advance(Duration::from_secs(3600)).await;
    let _ = m.update("new", |c| c.n = 1).await.unwrap();
    assert_eq!(m.flush_idle(Duration::from_secs(1800)), 1);
    assert!(m.cached("old").is_none());
    assert!(m.cached("new").is_some());
    assert_eq!(m.stats().flushed, 1);
}

#[tokio::test]
async fn delete_removes_everywhere_and_anti_entropy_notices() {
    let store = Arc::new(MemoryStore::new());
    let (a, b) = (manager(&store), manager(&store));
    let _ = a.update("k", |c| c.n = 1).await.unwrap();
    let _ = a.update("j", |c| c.n = 1).await.unwrap();
    let _ = b.get("k").await.unwrap();
    let _ = b.get("j").await.unwrap();
    assert!(a.delete("k").await.unwrap());
    assert!(!a.delete("k").await.unwrap());
    assert!(a.get("k").await.unwrap().is_none());
    let _ = a.update("j", |c| c.n = 2).await.unwrap();
    assert_eq!(b.cached("k").unwrap().n, 1, "b missed the delete");
    assert_eq!(b.anti_entropy(RepairReason::AntiEntropy).await.unwrap(), 2);
    assert!(b.cached("k").is_none());
    assert_eq!(b.cached("j").unwrap().n, 2);
    assert_eq!(b.stats().repairs.get(RepairReason::AntiEntropy), 2);
    assert_eq!(
        b.anti_entropy(RepairReason::AntiEntropy).await.unwrap(),
        0,
        "only differences"
    );
}

/// Public futures are Send + 'static.
#[test]
fn futures_are_send() {
    fn is_send<T: Send + 'static>(_: T) {}
    let store = Arc::new(MemoryStore::new());
    let m = manager(&store);
    let m2 = m.clone();
    is_send(async move { m2.get("x").await });
    let m2 = m.clone();
    is_send(async move { m2.update("x", |c| c.n += 1).await });
    let m2 = m.clone();
    is_send(async move { m2.anti_entropy(RepairReason::AntiEntropy).await });
    is_send(m.changes());
}

#[tokio::test]
async fn a_full_store_refuses_new_documents_and_keeps_the_rest() {
    let store = Arc::new(MemoryStore::builder().max_documents(2).build().unwrap());
    let m = manager(&store);
    let _ = m.update("a", |c| c.n = 1).await.unwrap();
    let _ = m.update("b", |c| c.n = 1).await.unwrap();
    let err = m.update("c", |c| c.n = 1).await.unwrap_err();
    assert!(matches!(err, Error::StoreFull { limit: 2 }), "{err}");
    assert!(!err.is_retryable());
    assert!(m.get("c").await.unwrap().is_none());
    // Existing documents still take updates.
    assert_eq!(m.update("a", |c| c.n = 2).await.unwrap().version(), 2);
    assert!(MemoryStore::builder().max_documents(0).build().is_err());
}

#[tokio::test]
async fn get_or_default_caches_nothing_so_a_later_create_is_seen() {
    let store = Arc::new(MemoryStore::new());
    let (a, b) = (manager(&store), manager(&store));
    let empty = b.get_or_default("new").await.unwrap();
    assert_eq!((empty.n, empty.stamp()), (0, None));
    assert!(b.cached("new").is_none(), "the empty value is not cached");
    let UpdateOutcome::Changed { delta, .. } = a.update("new", |c| c.n = 5).await.unwrap() else {
        panic!()
    };
    b.apply_remote(delta).await;
    assert_eq!(b.get("new").await.unwrap().unwrap().n, 5);
    assert_eq!(b.get_or_default("new").await.unwrap().n, 5);
}
