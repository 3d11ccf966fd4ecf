//! SyncService: lost subscriptions, lagging subscribers, shutdown.

use std::sync::Arc;
use std::time::Duration;

use electric_core::manager::{DataManager, Document, RepairReason};
use electric_core::store::Store;
use electric_core::sync::{SyncConfig, SyncService};
use electric_core::{Key, MemoryStore};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Doc {
    n: u64,
    pad: String,
}

impl Document for Doc {
    fn empty(_: &Key) -> Option<Self> {
        Some(Doc {
            n: 0,
            pad: "x".repeat(100),
        })
    }
}

fn manager(store: &MemoryStore) -> DataManager<Doc> {
    DataManager::builder(Arc::new(store.clone()) as Arc<dyn Store>, "p", "docs")
        .build()
        .unwrap()
}

async fn wait_until(mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..400 {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

fn quiet() -> SyncConfig {
    SyncConfig {
        anti_entropy_interval: Duration::from_secs(3600),
        ..SyncConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_subscription_is_reestablished_and_repaired_at_once() {
    let store = MemoryStore::new();
    let (a, b) = (manager(&store), manager(&store));
    let token = CancellationToken::new();
    let sync = SyncService::builder()
        .manager(&b)
        .config(quiet())
        .build()
        .unwrap()
        .spawn(token.clone());
    for id in ["x", "y"] {
        let _ = a.update(id, |d| d.n = 1).await.unwrap();
        let _ = b.get(id).await.unwrap();
    }
    // Live delivery works.
    let _ = a.update("x", |d| d.n = 2).await.unwrap();
    assert!(wait_until(|| b.cached("x").is_some_and(|d| d.n == 2)).await);
    // The connection drops; writes made before b re-subscribes are never delivered.
    store.disconnect_subscribers();
    let _ = a.update("x", |d| d.n = 3).await.unwrap();
    let _ = a.update("y", |d| d.n = 3).await.unwrap();
    assert!(
        wait_until(|| ["x", "y"]
            .iter()
            .all(|id| b.cached(id).is_some_and(|d| d.n == 3)))
        .await,
        "repaired after re-subscribing"
    );
    assert!(b.stats().repairs.get(RepairReason::Reconnect) >= 1);
    token.cancel();
    sync.join().await;
}

#[tokio::test]
async fn lagging_subscriber_is_told_and_resynchronises() {
    let store = MemoryStore::builder().channel_capacity(4).build().unwrap();
    let (a, b) = (manager(&store), manager(&store));
    let token = CancellationToken::new();
    let sync = SyncService::builder()
        .manager(&b)
        .config(SyncConfig {
            workers: 1,
            queue_capacity: 1,
            ..quiet()
        })
        .build()
        .unwrap()
        .spawn(token.clone());
    for i in 0..20 {
        let id = format!("k{i}");
        let _ = a.update(&id, |d| d.n = 1).await.unwrap();
        let _ = b.get(&id).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The writes run on another thread while this single-threaded runtime, which runs b's sync
    // service, is blocked: b cannot read its subscription, which overflows (the store's
    // backpressure only makes committers yield on their own runtime).
    let writer = a.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            for round in 2..=6 {
                for i in 0..20 {
                    let _ = writer
                        .update(&format!("k{i}"), |d| d.n = round)
                        .await
                        .unwrap();
                }
            }
        });
    })
    .join()
    .unwrap();
    assert!(
        wait_until(|| (0..20).all(|i| b.cached(&format!("k{i}")).is_some_and(|d| d.n == 6))).await,
        "converged after lagging"
    );
    assert!(
        b.stats().repairs.get(RepairReason::Lagged) >= 1,
        "{:?}",
        b.stats()
    );
    token.cancel();
    sync.join().await;
}

#[tokio::test]
async fn shutdown_is_graceful_and_config_is_validated() {
    let store = MemoryStore::new();
    let m = manager(&store);
    let token = CancellationToken::new();
    let sync = SyncService::builder()
        .manager(&m)
        .build()
        .unwrap()
        .spawn(token.clone());
    token.cancel();
    tokio::time::timeout(Duration::from_secs(5), sync.join())
        .await
        .expect("stops promptly");
    for bad in [
        SyncConfig {
            workers: 0,
            ..SyncConfig::default()
        },
        SyncConfig {
            queue_capacity: 0,
            ..SyncConfig::default()
        },
        SyncConfig {
            anti_entropy_interval: Duration::ZERO,
            ..SyncConfig::default()
        },
        SyncConfig {
            resubscribe_max: Duration::from_millis(1),
            ..SyncConfig::default()
        },
    ] {
        assert!(SyncService::builder().config(bad).build().is_err());
    }
}

/// A writer whose commits never wait (the embedded store) on many documents, sharing one
/// thread with a replica's sync service: the store holds the writer back instead of letting
/// the replica's subscription overflow, so every delta is applied and nothing needs repairing.
#[tokio::test]
async fn writers_that_never_wait_are_held_back_instead_of_overflowing_subscribers() {
    const KEYS: usize = 500;
    let store = MemoryStore::builder().channel_capacity(64).build().unwrap();
    let (a, b) = (manager(&store), manager(&store));
    let token = CancellationToken::new();
    let sync = SyncService::builder()
        .manager(&b)
        .config(SyncConfig {
            workers: 1,
            queue_capacity: 16,
            ..quiet()
        })
        .build()
        .unwrap()
        .spawn(token.clone());
    for i in 0..KEYS {
        let id = format!("k{i}");
        let _ = a.update(&id, |d| d.n = 1).await.unwrap();
        let _ = b.get(&id).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let applied_before = b.stats().applied;
    for round in 2..=4 {
        for i in 0..KEYS {
            let _ = a.update(&format!("k{i}"), |d| d.n = round).await.unwrap();
        }
    }
    assert!(
        wait_until(|| (0..KEYS).all(|i| b.cached(&format!("k{i}")).is_some_and(|d| d.n == 4)))
            .await,
        "converged"
    );
    let s = b.stats();
    assert_eq!(s.repairs.get(RepairReason::Lagged), 0, "{s:?}");
    assert_eq!(
        s.applied - applied_before,
        3 * KEYS as u64,
        "every delta applied"
    );
    assert!(store.held_back() > 0, "the writer was held back");
    token.cancel();
    sync.join().await;
}
