//! Two replicas of one section: writes on one are seen on the other, conflicts are retried, and
//! a lost delta is repaired from the change log.
//!
//! Run: `cargo run -p electric --example replicas`

use std::sync::Arc;
use std::time::Duration;

use electric::manager::{ChangeCause, RepairReason};
use electric::{DataManager, Document, Key, MemoryStore, SyncService};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Position {
    qty: f64,
    trades: u32,
    note: String,
}

impl Document for Position {
    fn empty(_key: &Key) -> Option<Self> {
        Some(Position {
            // Big enough that small changes travel as patches (a patch larger than half the
            // document is sent as a whole-document snapshot instead).
            note: "opened by the example; ".repeat(8),
            ..Position::default()
        })
    }
}

#[tokio::main]
async fn main() -> Result<(), electric::Error> {
    let store = Arc::new(MemoryStore::new());
    let token = CancellationToken::new();
    let a = DataManager::<Position>::builder(store.clone(), "intraday", "positions")
        .origin("replica-a")
        .build()?;
    let b = DataManager::<Position>::builder(store.clone(), "intraday", "positions")
        .origin("replica-b")
        .build()?;
    let sync = SyncService::builder()
        .manager(&b)
        .build()?
        .spawn(token.clone());
    let mut changes = b.changes();

    // b reads first so it caches the document and receives its deltas.
    let _ = a.update("PLANT-7", |p| p.qty = 10.0).await?;
    let _ = b.get("PLANT-7").await?;

    // Concurrent writers on both replicas: none of the 20 increments is lost.
    let (a2, b2) = (a.clone(), b.clone());
    let wa = tokio::spawn(async move {
        for _ in 0..10 {
            let _ = a2.update("PLANT-7", |p| p.trades += 1).await?;
        }
        Ok::<_, electric::Error>(())
    });
    let wb = tokio::spawn(async move {
        for _ in 0..10 {
            let _ = b2.update("PLANT-7", |p| p.trades += 1).await?;
        }
        Ok::<_, electric::Error>(())
    });
    wa.await.expect("writer a")?;
    wb.await.expect("writer b")?;
    let latest = a.get("PLANT-7").await?.expect("exists");
    let seen = b.get_at_least("PLANT-7", latest.version()).await?;
    println!(
        "after 20 concurrent increments: trades = {} at v{} (conflicts retried: a {}, b {})",
        seen.trades,
        seen.version(),
        a.stats().conflicts,
        b.stats().conflicts
    );

    // Simulate a lost delta: b misses v(n+1) and then receives v(n+2) — a gap, repaired from the log.
    let b_quiet =
        DataManager::<Position>::builder(store.clone(), "intraday", "positions").build()?;
    let _ = b_quiet.get("PLANT-7").await?;
    let before = b_quiet.stats().repairs.get(RepairReason::Gap);
    let _ = a.update("PLANT-7", |p| p.qty += 1.0).await?;
    let outcome = a.update("PLANT-7", |p| p.qty += 1.0).await?;
    if let electric::UpdateOutcome::Changed { delta, .. } = outcome {
        b_quiet.apply_remote(delta).await;
    }
    println!(
        "gap repaired from the change log: qty = {} (gap repairs {} -> {})",
        b_quiet.cached("PLANT-7").expect("cached").qty,
        before,
        b_quiet.stats().repairs.get(RepairReason::Gap)
    );

    // The change stream of b saw remote deltas.
    let mut remote = 0;
    while let Ok(Some(Ok(event))) =
        tokio::time::timeout(Duration::from_millis(50), changes.next()).await
    {
        if matches!(event.cause, ChangeCause::Remote(_)) {
            remote += 1;
        }
    }
    println!("b applied {remote} remote deltas from its change stream");

    token.cancel();
    sync.join().await;
    Ok(())
}
