//! Four managers, one store, lossy/duplicating/reordering/delaying subscriptions, random
//! concurrent updates to overlapping keys: after writes stop every manager converges to the
//! store and no update is lost.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use electric_core::manager::{DataManager, Document};
use electric_core::store::Store;
use electric_core::sync::{SyncConfig, SyncService};
use electric_core::{Key, MemoryStore, UpdateOutcome};
use electric_testkit::faults::{FaultConfig, FaultyStore};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Tally {
    n: u64,
    by: BTreeMap<String, u64>,
    history: Vec<u64>,
    pad: String,
}

impl Document for Tally {
    fn empty(_: &Key) -> Option<Self> {
        Some(Tally {
            pad: "p".repeat(300),
            ..Tally::default()
        })
    }
}

const REPLICAS: usize = 4;
const KEYS: usize = 8;
const UPDATES_PER_REPLICA: usize = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_converge_under_faults_and_lose_no_update() {
    let memory = MemoryStore::builder().log_capacity(16).build().unwrap();
    let faulty = Arc::new(FaultyStore::new(
        Arc::new(memory.clone()),
        FaultConfig {
            drop: 0.08,
            duplicate: 0.05,
            reorder: 0.05,
            delay: 0.05,
            max_delay: Duration::from_millis(3),
            seed: 42,
            ..FaultConfig::default()
        },
    ));
    let store: Arc<dyn Store> = faulty.clone();
    let token = CancellationToken::new();
    let mut managers = Vec::new();
    let mut services = Vec::new();
    for r in 0..REPLICAS {
        let m = DataManager::<Tally>::builder(store.clone(), "conv", "tallies")
            .origin(format!("replica-{r}"))
            .build()
            .unwrap();
        let sync = SyncService::builder()
            .manager(&m)
            .config(SyncConfig {
                workers: 2,
                anti_entropy_interval: Duration::from_millis(250),
                ..SyncConfig::default()
            })
            .build()
            .unwrap();
        services.push(sync.spawn(token.clone()));
        managers.push(m);
    }

    let mut writers = Vec::new();
    for (r, m) in managers.iter().enumerate() {
        let m = m.clone();
        writers.push(tokio::spawn(async move {
            let mut rng = SmallRng::seed_from_u64(r as u64);
            let mut ok = vec![0u64; KEYS];
            for _ in 0..UPDATES_PER_REPLICA {
                let k = rng.gen_range(0..KEYS);
                let id = format!("key-{k}");
                if rng.gen_bool(0.3) {
                    let _ = m.get(&id).await.unwrap();
                }
                let me = format!("replica-{r}");
                match m
                    .update(&id, |t| {
                        t.n += 1;
                        *t.by.entry(me.clone()).or_default() += 1;
                        t.history.push(t.n);
                        if t.history.len() > 5 {
                            t.history.remove(0);
                        }
                    })
                    .await
                {
                    Ok(UpdateOutcome::Changed { .. }) => ok[k] += 1,
                    Ok(UpdateOutcome::Unchanged { .. }) => panic!("every update changes"),
                    Err(e) => assert!(e.is_retryable(), "unexpected error {e}"),
                }
                if rng.gen_bool(0.2) {
                    tokio::task::yield_now().await;
                }
            }
            ok
        }));
    }
    let mut successes = [0u64; KEYS];
    for w in writers {
        for (k, n) in w.await.unwrap().into_iter().enumerate() {
            successes[k] += n;
        }
    }

    // Every replica reads every key (cold ones load), then all must settle on the store's state.
    for m in &managers {
        for k in 0..KEYS {
            let _ = m.get(&format!("key-{k}")).await.unwrap();
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let converged = loop {
        let mut all_equal = true;
        for k in 0..KEYS {
            let id = format!("key-{k}");
            let snap = memory
                .load(&managers[0].key(&id).unwrap())
                .await
                .unwrap()
                .expect("every key was written");
            let want: Tally = snap.doc.deserialize().unwrap();
            for m in &managers {
                match m.cached(&id) {
                    Some(d) if d.stamp() == Some(snap.stamp) && *d == want => {}
                    _ => all_equal = false,
                }
            }
        }
        if all_equal {
            break true;
        }
        if tokio::time::Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    token.cancel();
    for s in &services {
        s.join().await;
    }
    for (i, m) in managers.iter().enumerate() {
        eprintln!("replica {i}: {:?}", m.stats());
    }
    eprintln!(
        "faults (dropped, duplicated, reordered, delayed): {:?}",
        faulty.counts().get()
    );
    assert!(converged, "replicas did not converge within 20 s");

    let total: u64 = successes.iter().sum();
    assert!(
        total > (REPLICAS * UPDATES_PER_REPLICA) as u64 / 2,
        "most updates succeed"
    );
    for (k, want) in successes.iter().enumerate() {
        let doc = managers[0].cached(&format!("key-{k}")).unwrap();
        assert_eq!(
            doc.n, *want,
            "key-{k}: counter equals successful increments"
        );
        assert_eq!(doc.by.values().sum::<u64>(), *want);
        assert_eq!(doc.version(), *want, "one version per successful increment");
    }
    let (dropped, duplicated, reordered, _) = faulty.counts().get();
    assert!(
        dropped > 0 && duplicated > 0 && reordered > 0,
        "faults were injected"
    );
    let repairs: u64 = managers.iter().map(|m| m.stats().repairs.total()).sum();
    assert!(repairs > 0, "dropped deltas were repaired");
}
