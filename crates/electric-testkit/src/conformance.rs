//! The conformance suite every [`Store`] implementation must pass.
//!
//! Run it with [`store_conformance!`](crate::store_conformance), giving an async expression
//! that yields `Option<StoreUnderTest>` (`None` skips, e.g. when a server is unreachable):
//!
//! ```text
//! electric_testkit::store_conformance!(async {
//!     Some(electric_testkit::conformance::StoreUnderTest {
//!         store: std::sync::Arc::new(electric_core::MemoryStore::builder().log_capacity(8).build().unwrap()),
//!         log_capacity: 8,
//!     })
//! });
//! ```
//!
//! Every check uses its own random section, so suites may share a backend.

use std::sync::Arc;
use std::time::Duration;

use electric_core::store::{
    Changes, Commit, CommitOutcome, Head, Resolution, Snapshot, Store, SubscriptionEvent,
};
use electric_core::{CommitId, DeltaKind, Digest, Epoch, Key, Patch, SectionId, Stamp};
use futures_util::StreamExt;
use serde_json::{json, Value};

/// A store to check, with the log capacity it was configured with.
pub struct StoreUnderTest {
    /// The store.
    pub store: Arc<dyn Store>,
    /// Deltas it keeps per key (the suite checks trimming at this bound).
    pub log_capacity: usize,
}

/// Generates one `#[tokio::test]` per conformance check.
///
/// `store_conformance!(with_cleanup: factory)` takes a factory yielding
/// `Option<(StoreUnderTest, impl Future<Output = ()>)>`; the future runs after each check, even
/// a failing one (e.g. to delete the keys a check left in a shared server).
///
/// `store_conformance!(run_all: factory)`, inside a test, is a future that runs every check in
/// turn, each on a `StoreUnderTest` the factory future yields (for a backend a test starts
/// itself, such as a private server).
#[macro_export]
macro_rules! store_conformance {
    (@names @$mode:ident $factory:expr) => {
        $crate::store_conformance!(@$mode $factory;
            create_then_load, conflict_reports_actual, fields_set_and_removed,
            changes_since_returns_ordered_chain, log_is_capped_and_reports_trimmed,
            missing_key_everywhere, subscription_delivers_section_deltas_in_order,
            stamps_are_batched_in_order, delete_publishes_and_recreate_starts_new_epoch,
            ttl_is_set_refreshed_and_expires, concurrent_writers_lose_no_update,
            snapshot_commit_is_logged_as_snapshot, commits_are_idempotent_and_resolvable,
            creates_are_fenced_once_resolved, deletes_are_idempotent_by_id,
            digests_are_kept_with_versions);
    };
    (@plain $factory:expr; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                if let Some(sut) = $factory.await {
                    $crate::conformance::$name(sut).await;
                }
            }
        )*
    };
    (@cleanup $factory:expr; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                if let Some((sut, cleanup)) = $factory.await {
                    let outcome = ::tokio::spawn($crate::conformance::$name(sut)).await;
                    cleanup.await;
                    if let Err(e) = outcome {
                        if e.is_panic() {
                            ::std::panic::resume_unwind(e.into_panic());
                        }
                        panic!("conformance check did not finish: {e}");
                    }
                }
            }
        )*
    };
    (@run_all $factory:expr; $($name:ident),*) => {
        async {
            $( $crate::conformance::$name($factory.await).await; )*
        }
    };
    (run_all: $factory:expr) => {
        $crate::store_conformance!(@names @run_all $factory)
    };
    (with_cleanup: $factory:expr) => {
        $crate::store_conformance!(@names @cleanup $factory);
    };
    ($factory:expr) => {
        $crate::store_conformance!(@names @plain $factory);
    };
}

fn section() -> SectionId {
    SectionId::new(crate::unique("conf"), "docs").expect("valid section")
}

fn ops(v: Value) -> Patch {
    serde_json::from_value(v).expect("valid patch")
}

/// A loaded document as one JSON object (every member must parse).
pub fn doc_value(snap: &Snapshot) -> Value {
    Value::Object(snap.doc.to_map().expect("member texts are JSON"))
}

/// `value` as a [`Commit::fields`] text.
pub fn text(value: &Value) -> Box<serde_json::value::RawValue> {
    serde_json::value::to_raw_value(value).expect("serializes")
}

/// A commit setting member `field` to `value` from `expected`.
pub fn set(key: &Key, expected: Option<Stamp>, field: &str, value: Value) -> Commit {
    let op = if expected.is_none() { "add" } else { "replace" };
    Commit {
        key: key.clone(),
        expected,
        fields: vec![Commit::member(field, &value).expect("serializes")],
        doc: None,
        kind: DeltaKind::Patch,
        ops: ops(json!([{"op": op, "path": format!("/{field}"), "value": value}])),
        origin: "conformance".into(),
        ttl: None,
        id: CommitId::random(),
        digest: None,
    }
}

/// Commits `commit`, panicking on a conflict or an error (for tests).
pub async fn committed(store: &dyn Store, commit: Commit) -> electric_core::SharedDelta {
    match store.commit(&commit).await.expect("commit") {
        CommitOutcome::Committed(d) => d,
        CommitOutcome::Conflict { actual } => panic!("unexpected conflict, store has {actual:?}"),
    }
}

/// Creating a key yields version 1 with a fresh epoch; loading returns the fields; creating it
/// again conflicts.
pub async fn create_then_load(sut: StoreUnderTest) {
    let store = &*sut.store;
    let key = section().key("doc").expect("key");
    let d = committed(store, set(&key, None, "a", json!(1))).await;
    assert_eq!((d.base, d.version), (0, 1));
    assert_eq!(d.key, key);
    assert_eq!(d.origin, "conformance");
    assert!(
        d.change_time > 1_600_000_000_000,
        "change time is unix millis"
    );
    let snap = store.load(&key).await.expect("load").expect("exists");
    assert_eq!(snap.stamp, d.stamp());
    assert_eq!(snap.change_time, d.change_time);
    assert_eq!(doc_value(&snap), json!({"a": 1}));
    match store
        .commit(&set(&key, None, "a", json!(2)))
        .await
        .expect("commit")
    {
        CommitOutcome::Conflict { actual } => assert_eq!(actual, Some(d.stamp())),
        CommitOutcome::Committed(_) => panic!("second create must conflict"),
    }
}

/// A stale expected stamp (old version or other epoch) is rejected with the actual stamp and
/// changes nothing.
pub async fn conflict_reports_actual(sut: StoreUnderTest) {
    let store = &*sut.store;
    let key = section().key("doc").expect("key");
    let v1 = committed(store, set(&key, None, "a", json!(1)))
        .await
        .stamp();
    let v2 = committed(store, set(&key, Some(v1), "a", json!(2)))
        .await
        .stamp();
    assert_eq!((v2.epoch, v2.version), (v1.epoch, 2));
    for stale in [
        v1,
        Stamp {
            epoch: electric_core::Epoch::random(),
            version: 2,
        },
    ] {
        match store
            .commit(&set(&key, Some(stale), "a", json!(9)))
            .await
            .expect("commit")
        {
            CommitOutcome::Conflict { actual } => assert_eq!(actual, Some(v2)),
            CommitOutcome::Committed(_) => panic!("stale commit accepted"),
        }
    }
    let missing = section().key("nope").expect("key");
    match store
        .commit(&set(&missing, Some(v1), "a", json!(1)))
        .await
        .expect("commit")
    {
        CommitOutcome::Conflict { actual } => assert_eq!(actual, None),
        CommitOutcome::Committed(_) => panic!("commit on a missing key accepted"),
    }
    let snap = store.load(&key).await.expect("load").expect("exists");
    assert_eq!(doc_value(&snap)["a"], json!(2));
    assert!(store.load(&missing).await.expect("load").is_none());
}

/// Fields are written and removed as the commit says, other fields stay.
pub async fn fields_set_and_removed(sut: StoreUnderTest) {
    let store = &*sut.store;
    let key = section().key("doc").expect("key");
    let mut c = set(&key, None, "a", json!({"nested": [1, 2, {"x": "y"}]}));
    c.fields.push(("b".into(), Some(text(&json!("keep")))));
    c.fields.push(("c".into(), Some(text(&json!(null)))));
    c.ops = ops(json!([
        {"op": "add", "path": "/a", "value": {"nested": [1, 2, {"x": "y"}]}},
        {"op": "add", "path": "/b", "value": "keep"},
        {"op": "add", "path": "/c", "value": null}
    ]));
    let v1 = committed(store, c).await.stamp();
    let c = Commit {
        key: key.clone(),
        expected: Some(v1),
        fields: vec![("a".into(), None), ("d".into(), Some(text(&json!(4.5))))],
        doc: None,
        kind: DeltaKind::Patch,
        ops: ops(
            json!([{"op": "remove", "path": "/a"}, {"op": "add", "path": "/d", "value": 4.5}]),
        ),
        origin: "conformance".into(),
        ttl: None,
        id: CommitId::random(),
        digest: None,
    };
    committed(store, c).await;
    let snap = store.load(&key).await.expect("load").expect("exists");
    assert_eq!(doc_value(&snap), json!({"b": "keep", "c": null, "d": 4.5}));
}

/// `changes_since` returns every later delta in order, forming a chain.
pub async fn changes_since_returns_ordered_chain(sut: StoreUnderTest) {
    let store = &*sut.store;
    let key = section().key("doc").expect("key");
    let mut stamp = None;
    let mut written = Vec::new();
    for i in 0..5 {
        let d = committed(store, set(&key, stamp, "n", json!(i))).await;
        stamp = Some(d.stamp());
        written.push(d);
    }
    let Changes::Deltas { epoch, deltas } = store.changes_since(&key, 2).await.expect("changes")
    else {
        panic!("expected deltas")
    };
    assert_eq!(Some(epoch), stamp.map(|s| s.epoch));
    assert_eq!(deltas.len(), 3);
    for (got, want) in deltas.iter().zip(&written[2..]) {
        assert_eq!(**got, **want);
    }
    for w in deltas.windows(2) {
        assert_eq!(w[0].version, w[1].base);
    }
    match store.changes_since(&key, 5).await.expect("changes") {
        Changes::Deltas { deltas, .. } => assert!(deltas.is_empty()),
        other => panic!("expected no deltas, got {other:?}"),
    }
    match store.changes_since(&key, 0).await.expect("changes") {
        Changes::Deltas { deltas, .. } => assert_eq!(deltas.len(), 5),
        other => panic!("expected all deltas, got {other:?}"),
    }
}

/// The log keeps `log_capacity` deltas; asking further back says where it starts.
pub async fn log_is_capped_and_reports_trimmed(sut: StoreUnderTest) {
    let store = &*sut.store;
    let cap = sut.log_capacity as u64;
    let key = section().key("doc").expect("key");
    let mut stamp = None;
    for i in 0..cap + 5 {
        stamp = Some(
            committed(store, set(&key, stamp, "n", json!(i)))
                .await
                .stamp(),
        );
    }
    let earliest = 6; // versions 1..=cap+5 written, the newest cap kept
    match store.changes_since(&key, 0).await.expect("changes") {
        Changes::Trimmed { earliest: e, epoch } => {
            assert_eq!(e, earliest);
            assert_eq!(Some(epoch), stamp.map(|s| s.epoch));
        }
        other => panic!("expected trimmed, got {other:?}"),
    }
    match store
        .changes_since(&key, earliest - 1)
        .await
        .expect("changes")
    {
        Changes::Deltas { deltas, .. } => {
            assert_eq!(deltas.len() as u64, cap);
            assert_eq!(deltas[0].version, earliest);
        }
        other => panic!("expected deltas, got {other:?}"),
    }
}

/// Every read of a missing key says so without error.
pub async fn missing_key_everywhere(sut: StoreUnderTest) {
    let store = &*sut.store;
    let key = section().key("missing").expect("key");
    assert!(store.load(&key).await.expect("load").is_none());
    assert!(matches!(
        store.changes_since(&key, 0).await.expect("changes"),
        Changes::Missing
    ));
    assert_eq!(
        store
            .stamps(std::slice::from_ref(&key))
            .await
            .expect("stamps"),
        vec![None]
    );
    assert!(!store.delete(&key, "conformance").await.expect("delete"));
    assert!(!store
        .expire(&key, Duration::from_secs(5))
        .await
        .expect("expire"));
    assert_eq!(store.ttl(&key).await.expect("ttl"), None);
}

async fn next_delta(sub: &mut electric_core::Subscription) -> electric_core::SharedDelta {
    loop {
        let item = tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .expect("delta within 5 s")
            .expect("subscription open")
            .expect("readable message");
        if let SubscriptionEvent::Delta(d) = item {
            return d;
        }
    }
}

/// A subscription delivers exactly its section's deltas, in commit order per key.
pub async fn subscription_delivers_section_deltas_in_order(sut: StoreUnderTest) {
    let store = &*sut.store;
    let s = section();
    let other = section();
    let mut sub = store.subscribe(&s).await.expect("subscribe");
    let (a, b) = (s.key("a").expect("key"), s.key("b").expect("key"));
    let foreign = other.key("a").expect("key");
    committed(store, set(&foreign, None, "n", json!(0))).await;
    let mut sa = None;
    let mut sent = Vec::new();
    for i in 0..3 {
        let d = committed(store, set(&a, sa, "n", json!(i))).await;
        sa = Some(d.stamp());
        sent.push(d);
    }
    sent.push(committed(store, set(&b, None, "n", json!(1))).await);
    // Order is promised per key only: on a cluster, keys on different nodes race each other.
    let mut got = Vec::new();
    for _ in &sent {
        got.push(next_delta(&mut sub).await);
    }
    for key in [&a, &b] {
        let got: Vec<_> = got.iter().filter(|d| d.key == *key).map(|d| &**d).collect();
        let want: Vec<_> = sent
            .iter()
            .filter(|d| d.key == *key)
            .map(|d| &**d)
            .collect();
        assert_eq!(got, want, "{key}: deltas arrive in commit order and intact");
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(200), sub.next())
            .await
            .is_err(),
        "nothing from other sections"
    );
}

/// `stamps` answers many keys in the order asked.
pub async fn stamps_are_batched_in_order(sut: StoreUnderTest) {
    let store = &*sut.store;
    let s = section();
    let mut keys = Vec::new();
    let mut want = Vec::new();
    for i in 0..10 {
        let key = s.key(format!("k{i}")).expect("key");
        if i % 3 == 0 {
            want.push(None);
        } else {
            let mut stamp = None;
            for n in 0..(i % 4) + 1 {
                stamp = Some(
                    committed(store, set(&key, stamp, "n", json!(n)))
                        .await
                        .stamp(),
                );
            }
            want.push(stamp);
        }
        keys.push(key);
    }
    assert_eq!(store.stamps(&keys).await.expect("stamps"), want);
    assert!(store.stamps(&[]).await.expect("stamps").is_empty());
}

/// Delete removes document and log, publishes a `delete` delta, and a re-created key starts a
/// new lifetime at version 1.
pub async fn delete_publishes_and_recreate_starts_new_epoch(sut: StoreUnderTest) {
    let store = &*sut.store;
    let s = section();
    let key = s.key("doc").expect("key");
    let mut sub = store.subscribe(&s).await.expect("subscribe");
    let v1 = committed(store, set(&key, None, "a", json!(1))).await;
    assert_eq!(next_delta(&mut sub).await.version, 1);
    assert!(store.delete(&key, "conformance").await.expect("delete"));
    let del = next_delta(&mut sub).await;
    assert_eq!(del.kind, DeltaKind::Delete);
    assert_eq!((del.epoch, del.base, del.version), (v1.epoch, 1, 2));
    assert!(store.load(&key).await.expect("load").is_none());
    assert!(matches!(
        store.changes_since(&key, 0).await.expect("changes"),
        Changes::Missing
    ));
    let again = committed(store, set(&key, None, "a", json!(2))).await;
    assert_eq!(again.version, 1);
    assert_ne!(again.epoch, v1.epoch, "a re-created key gets a new epoch");
}

/// A commit's TTL is set and refreshed; `expire` changes it; an expired key is gone.
pub async fn ttl_is_set_refreshed_and_expires(sut: StoreUnderTest) {
    let store = &*sut.store;
    let key = section().key("doc").expect("key");
    let mut c = set(&key, None, "a", json!(1));
    c.ttl = Some(Duration::from_secs(60));
    let v1 = committed(store, c).await.stamp();
    let ttl = store.ttl(&key).await.expect("ttl").expect("has a ttl");
    assert!(
        ttl > Duration::from_secs(50) && ttl <= Duration::from_secs(60),
        "{ttl:?}"
    );
    let mut c = set(&key, Some(v1), "a", json!(2));
    c.ttl = Some(Duration::from_secs(600));
    committed(store, c).await;
    let ttl = store.ttl(&key).await.expect("ttl").expect("has a ttl");
    assert!(
        ttl > Duration::from_secs(500),
        "commit refreshes the ttl: {ttl:?}"
    );
    assert!(store
        .expire(&key, Duration::from_millis(150))
        .await
        .expect("expire"));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(store.load(&key).await.expect("load").is_none(), "expired");
    assert_eq!(
        store
            .stamps(std::slice::from_ref(&key))
            .await
            .expect("stamps"),
        vec![None]
    );
}

/// Many writers incrementing one counter through compare-and-set lose nothing.
pub async fn concurrent_writers_lose_no_update(sut: StoreUnderTest) {
    let key = section().key("counter").expect("key");
    let (writers, increments) = (6u64, 20u64);
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let (store, key) = (sut.store.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            let mut done = 0;
            while done < increments {
                let snap = store.load(&key).await.expect("load");
                let (expected, n) = match &snap {
                    Some(s) => (Some(s.stamp), doc_value(s)["n"].as_u64().expect("n")),
                    None => (None, 0),
                };
                if let CommitOutcome::Committed(_) = store
                    .commit(&set(&key, expected, "n", json!(n + 1)))
                    .await
                    .expect("commit")
                {
                    done += 1;
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    let snap = sut.store.load(&key).await.expect("load").expect("exists");
    assert_eq!(doc_value(&snap)["n"], json!(writers * increments));
    assert_eq!(snap.stamp.version, writers * increments);
}

/// A snapshot commit replaces the document and is logged as a snapshot.
pub async fn snapshot_commit_is_logged_as_snapshot(sut: StoreUnderTest) {
    let store = &*sut.store;
    let key = section().key("doc").expect("key");
    let v1 = committed(store, set(&key, None, "a", json!(1)))
        .await
        .stamp();
    let doc = json!({"b": [1, 2, 3]});
    let c = Commit {
        key: key.clone(),
        expected: Some(v1),
        fields: vec![
            ("a".into(), None),
            ("b".into(), Some(text(&json!([1, 2, 3])))),
        ],
        doc: None,
        kind: DeltaKind::Snapshot,
        ops: electric_core::Delta::snapshot_ops(doc.clone()),
        origin: "conformance".into(),
        ttl: None,
        id: CommitId::random(),
        digest: None,
    };
    let d = committed(store, c).await;
    assert_eq!(d.kind, DeltaKind::Snapshot);
    let snap = store.load(&key).await.expect("load").expect("exists");
    assert_eq!(doc_value(&snap), doc);
    match store.changes_since(&key, 1).await.expect("changes") {
        Changes::Deltas { deltas, .. } => {
            assert_eq!(deltas.len(), 1);
            assert_eq!(deltas[0].kind, DeltaKind::Snapshot);
            deltas[0].validate().expect("valid snapshot delta");
        }
        other => panic!("expected deltas, got {other:?}"),
    }
}

fn applied(r: Resolution) -> electric_core::SharedDelta {
    match r {
        Resolution::Committed(d) => d,
        other => panic!("expected committed, got {other:?}"),
    }
}

fn not_applied(r: Resolution) -> Option<Stamp> {
    match r {
        Resolution::NotApplied { actual } => actual,
        other => panic!("expected not applied, got {other:?}"),
    }
}

/// A commit carries its id into the log; sending it again reports the first outcome instead of
/// applying it twice; `resolve` says whether a commit was applied and applies one that can
/// still apply exactly as sent.
pub async fn commits_are_idempotent_and_resolvable(sut: StoreUnderTest) {
    let store = &*sut.store;
    let key = section().key("doc").expect("key");
    let x = set(&key, None, "n", json!(1));
    let d1 = committed(store, x.clone()).await;
    assert_eq!((d1.version, d1.commit), (1, Some(x.id)));
    assert_eq!(
        d1.epoch,
        Epoch::from(x.id),
        "a create takes its epoch from its id"
    );
    let again = committed(store, x.clone()).await;
    assert_eq!(
        (again.version, again.commit),
        (1, Some(x.id)),
        "a repeated create is reported, not applied"
    );
    assert_eq!(
        applied(store.resolve(&x).await.expect("resolve")).version,
        1
    );
    let y = set(&key, Some(d1.stamp()), "n", json!(2));
    let d2 = committed(store, y.clone()).await;
    let again = committed(store, y.clone()).await;
    assert_eq!((again.version, again.commit), (2, Some(y.id)));
    let resolved = applied(store.resolve(&y).await.expect("resolve"));
    assert_eq!((resolved.version, resolved.commit), (2, Some(y.id)));
    // Never sent, and its base is gone: not applied, and it never will be.
    let z = set(&key, Some(d1.stamp()), "n", json!(99));
    assert_eq!(
        not_applied(store.resolve(&z).await.expect("resolve")),
        Some(d2.stamp())
    );
    match store.commit(&z).await.expect("commit") {
        CommitOutcome::Conflict { actual } => assert_eq!(actual, Some(d2.stamp())),
        CommitOutcome::Committed(d) => panic!("a stale commit applied: {d:?}"),
    }
    // Never sent, and its base is current: resolve applies it, once.
    let w = set(&key, Some(d2.stamp()), "n", json!(3));
    let d3 = applied(store.resolve(&w).await.expect("resolve"));
    assert_eq!((d3.version, d3.commit), (3, Some(w.id)));
    let late = committed(store, w.clone()).await;
    assert_eq!(late.version, 3, "a late copy is reported, not applied");
    let snap = store.load(&key).await.expect("load").expect("exists");
    assert_eq!(
        (snap.stamp.version, doc_value(&snap)["n"].clone()),
        (3, json!(3))
    );
    match store.changes_since(&key, 0).await.expect("changes") {
        Changes::Deltas { deltas, .. } => {
            let ids: Vec<_> = deltas.iter().map(|d| d.commit).collect();
            assert_eq!(ids, vec![Some(x.id), Some(y.id), Some(w.id)]);
        }
        other => panic!("expected deltas, got {other:?}"),
    }
    // The lifetime it expected has ended: nobody can tell any more, and nothing applies.
    let v = set(&key, Some(d3.stamp()), "n", json!(4));
    assert!(store.delete(&key, "conformance").await.expect("delete"));
    match store.resolve(&v).await.expect("resolve") {
        Resolution::Unknown { .. } => {}
        other => panic!("expected unknown, got {other:?}"),
    }
    assert!(store.load(&key).await.expect("load").is_none());
}

/// A create that `resolve` found not applied is refused for ever after, even once the key is
/// gone again; one that was applied is never applied a second time.
pub async fn creates_are_fenced_once_resolved(sut: StoreUnderTest) {
    let store = &*sut.store;
    let key = section().key("doc").expect("key");
    let first = committed(store, set(&key, None, "n", json!(1))).await;
    let c = set(&key, None, "n", json!(2));
    assert_eq!(
        not_applied(store.resolve(&c).await.expect("resolve")),
        Some(first.stamp())
    );
    assert!(store.delete(&key, "conformance").await.expect("delete"));
    match store.commit(&c).await.expect("commit") {
        CommitOutcome::Conflict { actual } => assert_eq!(actual, None),
        CommitOutcome::Committed(d) => panic!("a fenced create applied: {d:?}"),
    }
    assert!(store.load(&key).await.expect("load").is_none());
    assert_eq!(not_applied(store.resolve(&c).await.expect("resolve")), None);
    // Resolving a create of an absent key applies it; a late copy after a delete does not.
    let d = set(&key, None, "n", json!(3));
    let created = applied(store.resolve(&d).await.expect("resolve"));
    assert_eq!((created.version, created.epoch), (1, Epoch::from(d.id)));
    assert!(store.delete(&key, "conformance").await.expect("delete"));
    if let CommitOutcome::Committed(late) = store.commit(&d).await.expect("commit") {
        assert_eq!(
            late.epoch,
            Epoch::from(d.id),
            "reported as the earlier create"
        );
    }
    assert!(
        store.load(&key).await.expect("load").is_none(),
        "a late copy of a create does not bring the key back"
    );
}

/// Repeating a delete with the same id returns the first answer and deletes nothing more.
pub async fn deletes_are_idempotent_by_id(sut: StoreUnderTest) {
    let store = &*sut.store;
    let key = section().key("doc").expect("key");
    committed(store, set(&key, None, "n", json!(1))).await;
    let del = CommitId::random();
    assert!(store
        .delete_with_id(&key, "conformance", del)
        .await
        .expect("delete"));
    let again = committed(store, set(&key, None, "n", json!(2))).await;
    assert!(
        store
            .delete_with_id(&key, "conformance", del)
            .await
            .expect("delete"),
        "the first answer"
    );
    let snap = store
        .load(&key)
        .await
        .expect("load")
        .expect("the new lifetime stays");
    assert_eq!(snap.stamp, again.stamp());
    assert!(store.delete(&key, "conformance").await.expect("delete"));
    let missing = CommitId::random();
    assert!(!store
        .delete_with_id(&key, "conformance", missing)
        .await
        .expect("delete"));
    committed(store, set(&key, None, "n", json!(3))).await;
    assert!(
        !store
            .delete_with_id(&key, "conformance", missing)
            .await
            .expect("delete"),
        "still the first answer"
    );
    assert!(store.load(&key).await.expect("load").is_some());
}

/// A commit's digest is kept with its version: loads, heads, the delta and the log carry it;
/// a commit without one clears it.
pub async fn digests_are_kept_with_versions(sut: StoreUnderTest) {
    let store = &*sut.store;
    let s = section();
    let key = s.key("doc").expect("key");
    let mut sub = store.subscribe(&s).await.expect("subscribe");
    let digest = Digest::from_raw(0x0123_4567_89ab_cdef);
    let mut c = set(&key, None, "n", json!(1));
    c.digest = Some(digest);
    let d1 = committed(store, c).await;
    assert_eq!(d1.digest, Some(digest));
    assert_eq!(next_delta(&mut sub).await.digest, Some(digest));
    let snap = store.load(&key).await.expect("load").expect("exists");
    assert_eq!(snap.digest, Some(digest));
    let other = s.key("missing").expect("key");
    assert_eq!(
        store.heads(&[key.clone(), other]).await.expect("heads"),
        vec![
            Some(Head {
                stamp: d1.stamp(),
                digest: Some(digest)
            }),
            None
        ]
    );
    match store.changes_since(&key, 0).await.expect("changes") {
        Changes::Deltas { deltas, .. } => assert_eq!(deltas[0].digest, Some(digest)),
        other => panic!("expected deltas, got {other:?}"),
    }
    let d2 = committed(store, set(&key, Some(d1.stamp()), "n", json!(2))).await;
    assert_eq!(d2.digest, None);
    assert_eq!(
        store
            .load(&key)
            .await
            .expect("load")
            .expect("exists")
            .digest,
        None
    );
    assert_eq!(
        store
            .heads(std::slice::from_ref(&key))
            .await
            .expect("heads")[0],
        Some(Head {
            stamp: d2.stamp(),
            digest: None
        })
    );
}
