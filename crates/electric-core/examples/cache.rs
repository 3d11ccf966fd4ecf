//! Run: `cargo run -p electric-core --example cache`
//!
//! A memory cache in front of a slow "database": 50 concurrent readers of one key run the loader
//! once; a failed load is not cached; entries expire after their time to live.

use std::sync::Arc;
use std::time::Duration;

use electric_core::cache::MemoryCache;

#[derive(Debug, thiserror::Error)]
#[error("database unavailable")]
struct DbDown;

async fn load_user(id: u32, fail: bool) -> Result<Arc<String>, DbDown> {
    tokio::time::sleep(Duration::from_millis(50)).await;
    if fail {
        return Err(DbDown);
    }
    Ok(Arc::new(format!("user-{id}")))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cache = MemoryCache::<u32, Arc<String>>::builder()
        .max_capacity(10_000)
        .default_ttl(Duration::from_secs(60))
        .build()?;

    // 50 readers miss at once: one load.
    let readers: Vec<_> = (0..50)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.get_or_load(7, || load_user(7, false)).await })
        })
        .collect();
    for r in readers {
        r.await??;
    }
    println!("after 50 concurrent misses: {:?}", cache.stats());

    // A failing load reaches the caller and is not cached.
    let err = cache.get_or_load(8, || load_user(8, true)).await;
    println!("failed load: {:?}", err.err().map(|e| e.to_string()));
    let ok = cache.get_or_load(8, || load_user(8, false)).await?;
    println!("retried load: {ok}");

    // Per-entry time to live, remove returning the value, non-blocking clear.
    cache
        .insert_with_ttl(9, Arc::new("short-lived".into()), Duration::from_millis(10))
        .await?;
    tokio::time::sleep(Duration::from_millis(20)).await;
    println!("expired entry: {:?}", cache.get(&9).await);
    println!("removed: {:?}", cache.remove(&7).await);
    cache.clear();
    println!(
        "after clear: {:?}; stats {:?}",
        cache.get(&8).await,
        cache.stats()
    );
    Ok(())
}
