//! Faults and bad input: killed subscriptions, a flushed server, a flushed script cache, an
//! unreachable server, and keys, log entries and channel messages in a foreign layout.
//!
//! Tests that flush, kill clients or stop the server use a private `redis-server` on its own
//! port (started and stopped by PID here); the others use a fresh namespace on the shared
//! server and delete it afterwards.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{PrivateCluster, PrivateRedis};
use electric_core::manager::{DataManager, Document, RepairReason};
use electric_core::store::{Changes, Store, SubscriptionEvent};
use electric_core::sync::{SyncConfig, SyncService};
use electric_core::{Error, Key, UpdateOutcome};
use electric_redis::redis;
use electric_redis::RedisStore;
use electric_testkit::conformance::{committed, set};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Counter {
    n: u64,
    pad: String,
}

impl Document for Counter {
    fn empty(_: &Key) -> Option<Self> {
        Some(Counter {
            n: 0,
            pad: "x".repeat(200),
        })
    }
}

const DOCS: usize = 4;

fn sync_config() -> SyncConfig {
    SyncConfig {
        workers: 2,
        // Only the reconnect pass (and delta handling) may repair: the periodic pass is far away.
        anti_entropy_interval: Duration::from_secs(3600),
        resubscribe_min: Duration::from_millis(20),
        resubscribe_max: Duration::from_millis(200),
        ..SyncConfig::default()
    }
}

/// Waits (bounded) until every manager caches exactly the store's state of every doc.
async fn converged(store: &RedisStore, managers: &[DataManager<Counter>]) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut equal = true;
        for i in 0..DOCS {
            let id = format!("doc-{i}");
            let snap = store.load(&managers[0].key(&id).unwrap()).await.unwrap();
            for m in managers {
                let cached = m.cached(&id);
                match (&snap, cached) {
                    (Some(s), Some(d)) => {
                        let want: Counter = s.doc.deserialize().unwrap();
                        if d.stamp() != Some(s.stamp) || *d != want {
                            equal = false;
                        }
                    }
                    (None, None) => {}
                    _ => equal = false,
                }
            }
        }
        if equal {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn replicas(
    store: &RedisStore,
    n: usize,
    token: &CancellationToken,
) -> (Vec<DataManager<Counter>>, Vec<electric_core::SyncHandle>) {
    let mut managers = Vec::new();
    let mut handles = Vec::new();
    for r in 0..n {
        let m = DataManager::<Counter>::builder(Arc::new(store.clone()), "faults", "counters")
            .origin(format!("replica-{r}"))
            .build()
            .unwrap();
        handles.push(
            SyncService::builder()
                .manager(&m)
                .config(sync_config())
                .build()
                .unwrap()
                .spawn(token.clone()),
        );
        managers.push(m);
    }
    // Create every doc, then warm every cache so deltas are applied, not ignored as cold.
    // (A cache entry for a key that did not exist yet is only refreshed by anti-entropy.)
    for i in 0..DOCS {
        let _ = managers[0]
            .update(&format!("doc-{i}"), |c| c.n += 1)
            .await
            .unwrap();
    }
    for m in &managers {
        for i in 0..DOCS {
            let _ = m.get_or_default(&format!("doc-{i}")).await.unwrap();
        }
    }
    (managers, handles)
}

async fn write_round(m: &DataManager<Counter>, rounds: usize) -> u64 {
    let mut ok = 0;
    for r in 0..rounds {
        let id = format!("doc-{}", r % DOCS);
        match m.update(&id, |c| c.n += 1).await {
            Ok(UpdateOutcome::Changed { .. }) => ok += 1,
            Ok(UpdateOutcome::Unchanged { .. }) => panic!("every update changes"),
            Err(e) => assert!(e.is_retryable(), "unexpected error {e}"),
        }
    }
    ok
}

async fn total(store: &RedisStore, m: &DataManager<Counter>) -> u64 {
    let mut sum = 0;
    for i in 0..DOCS {
        if let Some(s) = store
            .load(&m.key(&format!("doc-{i}")).unwrap())
            .await
            .unwrap()
        {
            sum += s.doc.value("n").unwrap().and_then(|v| v.as_u64()).unwrap();
        }
    }
    sum
}

/// Pub/sub connections are killed while writes continue; the subscriptions end, the sync
/// services re-subscribe and repair, and every replica converges without losing an update.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_subscriptions_reconnect_and_replicas_converge() {
    let Some(server) = PrivateRedis::start().await else {
        return;
    };
    let store = RedisStore::connect(&server.url()).await.unwrap();
    let killer = store.clone();
    killed_subscriptions(&store, move || {
        let s = killer.clone();
        async move {
            s.query::<u64>(redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub"))
                .await
                .unwrap()
        }
    })
    .await;
}

/// The same on a private three-master cluster: the pub/sub connection to a seed node is
/// killed on every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_killed_subscriptions_reconnect_and_replicas_converge() {
    let Some(cluster) = PrivateCluster::start().await else {
        return;
    };
    let store = RedisStore::connect(&cluster.url()).await.unwrap();
    assert!(store.is_cluster());
    let cluster = Arc::new(cluster);
    let c = cluster.clone();
    killed_subscriptions(&store, move || {
        let c = c.clone();
        async move {
            c.on_each(redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub"))
                .await
        }
    })
    .await;
}

async fn killed_subscriptions<F, Fut>(store: &RedisStore, kill: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = u64>,
{
    let token = CancellationToken::new();
    let (managers, handles) = replicas(store, 3, &token).await;
    let writer = {
        let m = managers[0].clone();
        tokio::spawn(async move { write_round(&m, 400).await })
    };
    let writer2 = {
        let m = managers[1].clone();
        tokio::spawn(async move { write_round(&m, 400).await })
    };
    let mut kills = 0;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(40)).await;
        kills += kill().await;
    }
    let ok = writer.await.unwrap() + writer2.await.unwrap();
    assert!(kills > 0, "some pub/sub connection was killed");
    assert!(
        store
            .stats()
            .subscriptions_lost
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0,
        "the store saw its subscriptions end"
    );
    assert!(converged(store, &managers).await, "replicas converge");
    assert_eq!(
        total(store, &managers[0]).await,
        ok + DOCS as u64,
        "no update lost"
    );
    let reconnect_repairs: u64 = managers
        .iter()
        .map(|m| m.stats().repairs.get(RepairReason::Reconnect))
        .sum();
    eprintln!("kills {kills}, reconnect repairs {reconnect_repairs}");
    token.cancel();
    for h in handles {
        h.join().await;
    }
}

/// FLUSHALL mid-run: writers re-create the documents under new epochs and every replica
/// reloads instead of patching its stale state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushall_makes_replicas_reload_the_new_epoch() {
    let Some(server) = PrivateRedis::start().await else {
        return;
    };
    let store = RedisStore::connect(&server.url()).await.unwrap();
    let flusher = store.clone();
    flushed(&store, move || {
        let s = flusher.clone();
        async move { s.query::<()>(&redis::cmd("FLUSHALL")).await.unwrap() }
    })
    .await;
}

/// The same on a private three-master cluster, flushing every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_flushall_makes_replicas_reload_the_new_epoch() {
    let Some(cluster) = PrivateCluster::start().await else {
        return;
    };
    let store = RedisStore::connect(&cluster.url()).await.unwrap();
    let cluster = Arc::new(cluster);
    let c = cluster.clone();
    flushed(&store, move || {
        let c = c.clone();
        async move {
            c.on_each(&redis::cmd("FLUSHALL")).await;
        }
    })
    .await;
}

async fn flushed<F, Fut>(store: &RedisStore, flush: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let token = CancellationToken::new();
    let (managers, handles) = replicas(store, 3, &token).await;
    write_round(&managers[0], 40).await;
    assert!(converged(store, &managers).await);
    let before = store
        .load(&managers[0].key("doc-0").unwrap())
        .await
        .unwrap()
        .unwrap()
        .stamp;
    flush().await;
    // The writer's cache is stale: its commit conflicts (key missing), it reloads and creates.
    let ok = write_round(&managers[0], 8).await;
    assert_eq!(ok, 8);
    assert!(converged(store, &managers).await, "replicas converge");
    let after = store
        .load(&managers[0].key("doc-0").unwrap())
        .await
        .unwrap()
        .unwrap()
        .stamp;
    assert_ne!(after.epoch, before.epoch, "a new epoch after the flush");
    assert_eq!(after.version, 2, "counted from the flush");
    assert_eq!(managers[0].cached("doc-0").unwrap().n, 2);
    for m in &managers[1..] {
        assert_eq!(
            m.cached("doc-0").unwrap().n,
            2,
            "no delta applied onto stale state"
        );
        assert_eq!(
            m.cached("doc-0").unwrap().stamp(),
            Some(after),
            "on the new epoch"
        );
    }
    token.cancel();
    for h in handles {
        h.join().await;
    }
}

/// After `SCRIPT FLUSH` the next commit reloads the script and succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_flush_is_survived() {
    let Some(server) = PrivateRedis::start().await else {
        return;
    };
    let store = RedisStore::connect(&server.url()).await.unwrap();
    let key = Key::new("faults", "scripts", "doc").unwrap();
    let d1 = committed(&store, set(&key, None, "a", json!(1))).await;
    store
        .query::<()>(redis::cmd("SCRIPT").arg("FLUSH"))
        .await
        .unwrap();
    let outcome = store
        .commit(&set(&key, Some(d1.stamp()), "a", json!(2)))
        .await
        .unwrap();
    assert!(matches!(outcome, electric_core::CommitOutcome::Committed(d) if d.version == 2));
    store
        .query::<()>(redis::cmd("SCRIPT").arg("FLUSH"))
        .await
        .unwrap();
    assert!(matches!(
        store.changes_since(&key, 0).await.unwrap(),
        Changes::Deltas { deltas, .. } if deltas.len() == 2
    ));
    assert!(store.delete(&key, "t").await.unwrap());
}

/// Start-up against a closed port fails with `Unavailable` within the connect timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_at_start_is_unavailable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = RedisStore::builder(&format!("redis://127.0.0.1:{port}"))
        .connect_timeout(Duration::from_millis(500))
        .connect()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err}");
    assert!(err.is_retryable());
    let err = RedisStore::connect("not a url").await.unwrap_err();
    assert!(matches!(err, Error::InvalidConfig(_)), "{err}");
}

/// The server goes away mid-run: calls fail with `Unavailable` after bounded retries, the
/// subscription ends; once it is back, calls succeed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_mid_run_is_unavailable_then_recovers() {
    let Some(mut server) = PrivateRedis::start().await else {
        return;
    };
    let store = RedisStore::builder(&server.url())
        .retry_deadline(Duration::from_millis(300))
        .response_timeout(Duration::from_millis(500))
        .connect()
        .await
        .unwrap();
    let key = Key::new("faults", "outage", "doc").unwrap();
    let _ = store.commit(&set(&key, None, "a", json!(1))).await.unwrap();
    let mut sub = store.subscribe(&key.section_id()).await.unwrap();
    server.stop();
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(item) = sub.next().await {
            let _ = item;
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the subscription ends when the server is gone"
    );
    let err = store.load(&key).await.unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err}");
    let err = store
        .commit(&set(&key, None, "a", json!(1)))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err}");
    assert!(store.subscribe(&key.section_id()).await.is_err());
    server.restart().await;
    // The connection manager reconnects in the background; reads retry until it has.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match store.load(&key).await {
            Ok(None) => break, // the restarted server is empty
            Ok(Some(s)) => panic!("unexpected {s:?}"),
            Err(e) => {
                assert!(e.is_retryable(), "{e}");
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "did not recover: {e}"
                );
            }
        }
    }
    let outcome = store.commit(&set(&key, None, "a", json!(1))).await.unwrap();
    assert!(matches!(
        outcome,
        electric_core::CommitOutcome::Committed(_)
    ));
}

/// Keys in our namespace with a foreign layout are `Malformed`, never a panic or a wrong
/// answer; `delete` removes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_layouts_are_malformed() {
    let Some(store) = common::single(8).await else {
        return;
    };
    common::with_cleanup(store, |store| async move {
        let l = store.layout().clone();
        let s = electric_core::SectionId::new(electric_testkit::unique("foreign"), "docs").unwrap();
        let malformed = |r: Result<_, Error>| match r {
            Err(Error::Malformed { .. }) => {}
            Err(e) => panic!("expected malformed, got {e}"),
            Ok(_) => panic!("expected malformed, got a value"),
        };

        // A string where the hash should be.
        let k = s.key("string").unwrap();
        store
            .query::<()>(redis::cmd("SET").arg(l.doc_key(&k)).arg("x"))
            .await
            .unwrap();
        malformed(store.load(&k).await.map(|_| ()));
        malformed(
            store
                .commit(&set(&k, None, "a", json!(1)))
                .await
                .map(|_| ()),
        );
        malformed(store.changes_since(&k, 0).await.map(|_| ()));

        // A hash without __v.
        let k = s.key("novers").unwrap();
        store
            .query::<()>(redis::cmd("HSET").arg(l.doc_key(&k)).arg(".a").arg("1"))
            .await
            .unwrap();
        malformed(store.load(&k).await.map(|_| ()));
        malformed(
            store
                .commit(&set(&k, None, "a", json!(1)))
                .await
                .map(|_| ()),
        );
        malformed(store.changes_since(&k, 0).await.map(|_| ()));
        malformed(store.stamps(std::slice::from_ref(&k)).await.map(|_| ()));
        assert!(
            store.delete(&k, "t").await.unwrap(),
            "delete removes a foreign hash"
        );
        assert!(store.load(&k).await.unwrap().is_none());

        // A version or epoch that is not ours: every script refuses it as malformed, naming no
        // Lua internals.
        for (field, value) in [("__v", "abc"), ("__v", "-1"), ("__e", "not-hex-digits!!")] {
            let k = s.key(format!("bad-{}-{value}", &field[2..])).unwrap();
            let d = committed(&store, set(&k, None, "a", json!(1))).await;
            store
                .query::<()>(redis::cmd("HSET").arg(l.doc_key(&k)).arg(field).arg(value))
                .await
                .unwrap();
            let no_lua = |r: Result<(), Error>| match r {
                Err(Error::Malformed { reason, .. }) => {
                    assert!(!reason.contains("user_script"), "{reason}");
                    assert!(!reason.contains("Lua"), "{reason}");
                }
                Err(e) => panic!("expected malformed, got {e}"),
                Ok(()) => panic!("expected malformed, got a value"),
            };
            no_lua(store.delete(&k, "t").await.map(|_| ()));
            no_lua(
                store
                    .commit(&set(&k, Some(d.stamp()), "a", json!(2)))
                    .await
                    .map(|_| ()),
            );
            no_lua(
                store
                    .resolve(&set(&k, None, "a", json!(2)))
                    .await
                    .map(|_| ()),
            );
            no_lua(store.changes_since(&k, 0).await.map(|_| ()));
            no_lua(store.stamps(std::slice::from_ref(&k)).await.map(|_| ()));
            no_lua(store.load(&k).await.map(|_| ()));
        }

        // A hash with a foreign field, a bad member value, a bad epoch. The store hands member
        // texts over unparsed, so a bad member is found by the manager that reads it.
        let m = DataManager::<serde_json::Map<String, serde_json::Value>>::builder(
            Arc::new(store.clone()),
            s.partition(),
            s.section(),
        )
        .build()
        .unwrap();
        for (i, (field, value)) in [("plain", "1"), (".a", "{not json"), ("__e", "zz")]
            .into_iter()
            .enumerate()
        {
            let k = s.key(format!("bad{i}")).unwrap();
            let d = committed(&store, set(&k, None, "a", json!(1))).await;
            assert_eq!(d.version, 1);
            store
                .query::<()>(redis::cmd("HSET").arg(l.doc_key(&k)).arg(field).arg(value))
                .await
                .unwrap();
            if field == ".a" {
                let snap = store.load(&k).await.unwrap().unwrap();
                assert_eq!(snap.doc.to_map().unwrap_err().member.as_deref(), Some("a"));
                match m.get(k.id()).await {
                    Err(Error::Malformed { reason, .. }) => {
                        assert!(
                            reason.contains("member \"a\""),
                            "names the member: {reason}"
                        );
                        assert!(reason.contains(k.id()), "names the key: {reason}");
                    }
                    other => panic!("expected malformed, got {other:?}"),
                }
            } else {
                malformed(store.load(&k).await.map(|_| ()));
            }
            malformed(m.get(k.id()).await.map(|_| ()));
            assert!(
                m.cached(k.id()).is_none(),
                "nothing cached for a bad document"
            );
        }

        // Member names that look reserved are stored under the prefix and round-trip.
        let k = s.key("reserved-names").unwrap();
        let mut c = set(&k, None, "__v", json!("mine"));
        c.fields
            .push(electric_core::Commit::member("__e", &7).unwrap());
        c.ops = serde_json::from_value(json!([
            {"op": "add", "path": "/__v", "value": "mine"},
            {"op": "add", "path": "/__e", "value": 7}
        ]))
        .unwrap();
        let _ = store.commit(&c).await.unwrap();
        let snap = store.load(&k).await.unwrap().unwrap();
        assert_eq!(snap.stamp.version, 1);
        assert_eq!(
            serde_json::Value::Object(snap.doc.to_map().unwrap()),
            json!({"__v": "mine", "__e": 7})
        );
        store.purge_namespace().await.unwrap();
    })
    .await;
}

/// A foreign entry in the change log is reported as `Malformed`; a log reaching past the
/// document is dropped by the next commit, which stays all-or-nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_log_entries_are_reported_and_repaired() {
    let Some(store) = common::single(8).await else {
        return;
    };
    common::with_cleanup(store, |store| async move {
        let l = store.layout().clone();
        let k = Key::new(electric_testkit::unique("log"), "docs", "doc").unwrap();
        let d1 = committed(&store, set(&k, None, "a", json!(1))).await;
        store
            .query::<String>(
                redis::cmd("XADD")
                    .arg(l.log_key(&k))
                    .arg("5-0")
                    .arg("d")
                    .arg("{garbage"),
            )
            .await
            .unwrap();
        let err = store.changes_since(&k, 0).await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::Malformed {
                    what: "log entry",
                    ..
                }
            ),
            "{err}"
        );
        // The next commit finds a log ahead of the document, drops it and commits v2.
        let outcome = store
            .commit(&set(&k, Some(d1.stamp()), "a", json!(2)))
            .await
            .unwrap();
        assert!(matches!(outcome, electric_core::CommitOutcome::Committed(d) if d.version == 2));
        assert_eq!(
            store
                .stats()
                .log_repairs
                .load(std::sync::atomic::Ordering::Relaxed),
            1,
            "the repair is counted"
        );
        match store.changes_since(&k, 1).await.unwrap() {
            Changes::Deltas { deltas, .. } => assert_eq!(deltas.len(), 1),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            store.changes_since(&k, 0).await.unwrap(),
            Changes::Trimmed { earliest: 2, .. }
        ));
        store.purge_namespace().await.unwrap();
    })
    .await;
}

/// A log whose newest entries reached past the document and were then deleted (`XDEL`) still
/// refuses older ids; the commit repairs it instead of failing for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_that_went_past_the_document_is_repaired_even_after_xdel() {
    let Some(store) = common::single(8).await else {
        return;
    };
    common::with_cleanup(store, |store| async move {
        let l = store.layout().clone();
        let k = Key::new(electric_testkit::unique("log"), "docs", "doc").unwrap();
        let d1 = committed(&store, set(&k, None, "a", json!(1))).await;
        let log = l.log_key(&k);
        store
            .query::<String>(redis::cmd("XADD").arg(&log).arg("9-0").arg("d").arg("{}"))
            .await
            .unwrap();
        store
            .query::<u64>(redis::cmd("XDEL").arg(&log).arg("9-0"))
            .await
            .unwrap();
        let outcome = store
            .commit(&set(&k, Some(d1.stamp()), "a", json!(2)))
            .await
            .unwrap();
        assert!(matches!(outcome, electric_core::CommitOutcome::Committed(d) if d.version == 2));
        assert_eq!(
            store
                .stats()
                .log_repairs
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        store.purge_namespace().await.unwrap();
    })
    .await;
}

/// A change log that is not a stream (a foreign writer) refuses the commit before anything is
/// written: the error is `Malformed` and the document keeps its version and members.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_log_key_refuses_the_commit_and_changes_nothing() {
    let Some(store) = common::single(8).await else {
        return;
    };
    common::with_cleanup(store, |store| async move {
        let l = store.layout().clone();
        let k = Key::new(electric_testkit::unique("log"), "docs", "doc").unwrap();
        let d1 = committed(&store, set(&k, None, "a", json!(1))).await;
        store
            .query::<()>(redis::cmd("SET").arg(l.log_key(&k)).arg("not a stream"))
            .await
            .unwrap();
        let err = store
            .commit(&set(&k, Some(d1.stamp()), "a", json!(2)))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Malformed { .. }), "{err}");
        let snap = store.load(&k).await.unwrap().expect("still there");
        assert_eq!(snap.stamp, d1.stamp());
        assert_eq!(snap.doc.get("a"), Some(&b"1"[..]));
        store.purge_namespace().await.unwrap();
    })
    .await;
}

/// Garbage, a foreign encoding and another section's delta on our channel are reported as
/// errors on the subscription, counted, and the stream goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_channel_messages_are_reported_and_skipped() {
    let Some(store) = common::single(8).await else {
        return;
    };
    common::with_cleanup(store, |store| async move {
        let s = electric_core::SectionId::new(electric_testkit::unique("chan"), "docs").unwrap();
        let mut sub = store.subscribe(&s).await.unwrap();
        let channel = store.layout().channel(&s);
        let other = Key::new("elsewhere", "docs", "x").unwrap();
        let foreign_delta = electric_core::Delta {
            key: other,
            epoch: electric_core::Epoch::random(),
            base: 0,
            version: 1,
            change_time: 1,
            origin: "x".into(),
            kind: electric_core::DeltaKind::Patch,
            ops: Default::default(),
            commit: None,
            digest: None,
        }
        .encode();
        for payload in [b"{garbage".to_vec(), br#"{"v":9}"#.to_vec(), foreign_delta] {
            store
                .query::<u64>(redis::cmd("PUBLISH").arg(&channel).arg(payload))
                .await
                .unwrap();
        }
        let k = s.key("doc").unwrap();
        let _ = store.commit(&set(&k, None, "a", json!(1))).await.unwrap();
        let mut errors = 0;
        loop {
            let item = tokio::time::timeout(Duration::from_secs(5), sub.next())
                .await
                .expect("message within 5 s")
                .expect("subscription open");
            match item {
                Err(e) => {
                    assert!(
                        matches!(
                            e,
                            Error::Malformed { .. } | Error::UnsupportedEncoding { .. }
                        ),
                        "{e}"
                    );
                    errors += 1;
                }
                Ok(SubscriptionEvent::Delta(d)) => {
                    assert_eq!(d.key, k);
                    break;
                }
                Ok(other) => panic!("{other:?}"),
            }
        }
        assert_eq!(errors, 3);
        assert_eq!(
            store
                .stats()
                .malformed_messages
                .load(std::sync::atomic::Ordering::Relaxed),
            3
        );
        store.purge_namespace().await.unwrap();
    })
    .await;
}
