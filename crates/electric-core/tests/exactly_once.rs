//! Exactly-once writes on `MemoryStore` behind a fault injector that loses requests, loses
//! replies of applied writes, and holds requests back to apply them later: every `Ok` is one
//! increment in the store, and nothing else is.

use std::sync::Arc;
use std::time::Duration;

use electric_core::manager::{DataManager, Document};
use electric_core::store::Store;
use electric_core::{Error, Key, MemoryStore, UpdateOutcome};
use electric_testkit::faults::{FaultConfig, FaultyStore};
use serde::{Deserialize, Serialize};

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

fn ambiguous_writes(seed: u64) -> FaultConfig {
    FaultConfig {
        request_lost: 0.05,
        reply_lost: 0.05,
        request_delayed: 0.05,
        max_delay: Duration::from_millis(5),
        seed,
        ..FaultConfig::default()
    }
}

async fn total(store: &MemoryStore, m: &DataManager<Counter>) -> u64 {
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

/// Three managers × 300 increments over four documents, a sixth of all writes ambiguous in one
/// of three ways: the store ends at exactly the number of `Ok` results, and every ambiguous
/// write was settled (no `Indeterminate`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_requests_lost_replies_and_late_copies_apply_exactly_once() {
    let memory = MemoryStore::new();
    let faulty = Arc::new(FaultyStore::new(
        Arc::new(memory.clone()),
        ambiguous_writes(7),
    ));
    let store: Arc<dyn Store> = faulty.clone();
    let mut tasks = Vec::new();
    let mut managers = Vec::new();
    for r in 0..3 {
        let m = DataManager::<Counter>::builder(store.clone(), "once", "counters")
            .origin(format!("writer-{r}"))
            .max_attempts(1000)
            .build()
            .unwrap();
        managers.push(m.clone());
        tasks.push(tokio::spawn(async move {
            let mut ok = 0u64;
            for i in 0..300 {
                match m.update(&format!("doc-{}", i % DOCS), |c| c.n += 1).await {
                    Ok(UpdateOutcome::Changed { .. }) => ok += 1,
                    Ok(UpdateOutcome::Unchanged { .. }) => panic!("every update changes"),
                    Err(e) => panic!("unexpected error {e}"),
                }
            }
            ok
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += t.await.unwrap();
    }
    // Late copies still in flight must not apply: wait past the longest hold-back.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(ok, 900);
    assert_eq!(
        total(&memory, &managers[0]).await,
        ok,
        "each Ok applied once"
    );
    let (lost, replies, delayed) = faulty.counts().writes();
    assert!(
        lost > 0 && replies > 0 && delayed > 0,
        "faults were injected: {lost} {replies} {delayed}"
    );
    let ambiguous: u64 = managers.iter().map(|m| m.stats().ambiguous).sum();
    let indeterminate: u64 = managers.iter().map(|m| m.stats().indeterminate).sum();
    assert!(ambiguous >= lost, "{ambiguous} ambiguous of {lost} lost");
    assert_eq!(indeterminate, 0);
    // The log holds each increment once: versions equal increments per document.
    let mut versions = 0;
    for i in 0..DOCS {
        let key = managers[0].key(&format!("doc-{i}")).unwrap();
        versions += memory.load(&key).await.unwrap().unwrap().stamp.version;
    }
    assert_eq!(versions, ok);
}

/// A delete whose reply is lost is settled by asking again with the same id: it reports that
/// the document existed, once, and never deletes a later lifetime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_apply_exactly_once() {
    let memory = MemoryStore::new();
    let faulty = Arc::new(FaultyStore::new(
        Arc::new(memory.clone()),
        FaultConfig {
            reply_lost: 0.3,
            request_lost: 0.3,
            seed: 3,
            ..FaultConfig::default()
        },
    ));
    let m = DataManager::<Counter>::builder(faulty.clone(), "once", "deleted")
        .max_attempts(1000)
        .build()
        .unwrap();
    let plain = DataManager::<Counter>::builder(Arc::new(memory.clone()), "once", "deleted")
        .build()
        .unwrap();
    for round in 0..40 {
        let _ = plain.update("d", |c| c.n = round).await.unwrap();
        assert!(m.delete("d").await.unwrap(), "round {round}: it existed");
        assert!(!m.delete("d").await.unwrap(), "round {round}: gone");
        assert!(memory.load(&m.key("d").unwrap()).await.unwrap().is_none());
    }
    assert!(m.stats().ambiguous > 0);
    assert_eq!(m.stats().indeterminate, 0);
}

/// A store that never answers: `update` gives up after the resolve deadline with
/// `Indeterminate` (not retryable), and the value was not written.
#[tokio::test(start_paused = true)]
async fn an_unreachable_store_is_indeterminate_after_the_deadline() {
    let memory = MemoryStore::new();
    let writer = DataManager::<Counter>::builder(Arc::new(memory.clone()), "once", "gone")
        .build()
        .unwrap();
    let _ = writer.update("k", |c| c.n = 1).await.unwrap();
    let faulty = Arc::new(FaultyStore::new(
        Arc::new(memory.clone()),
        FaultConfig {
            request_lost: 1.0,
            ..FaultConfig::default()
        },
    ));
    let m = DataManager::<Counter>::builder(faulty, "once", "gone")
        .resolve_deadline(Duration::from_secs(5))
        .build()
        .unwrap();
    let started = tokio::time::Instant::now();
    let err = m.update("k", |c| c.n += 1).await.unwrap_err();
    match &err {
        Error::Indeterminate { key, reason, .. } => {
            assert_eq!(key.id(), "k");
            assert!(reason.contains("did not answer"), "{reason}");
        }
        other => panic!("expected indeterminate, got {other}"),
    }
    assert!(!err.is_retryable());
    assert!(started.elapsed() >= Duration::from_secs(4));
    assert!(started.elapsed() <= Duration::from_secs(6));
    assert_eq!(m.stats().indeterminate, 1);
    let snap = memory
        .load(&writer.key("k").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(snap.stamp.version, 1, "the lost request never applied");
}
