//! Run: `cargo run -p electric-core --example partitioned_queue`
//!
//! Per-key ordered processing: events of one account are applied in order, accounts in
//! parallel, each key's queue bounded; a failing batch is reported, not lost.

use std::time::Duration;

use electric_core::collections::partitioned_queue::{FailureKind, Overflow, PartitionedQueue};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let queue = PartitionedQueue::builder()
        .max_batch(64)
        .max_concurrency(8)
        .per_key_bound(1_000, Overflow::Wait)
        .idle_timeout(Duration::from_secs(1))
        .on_error(|f| {
            let why = match &f.kind {
                FailureKind::Error(e) => e.to_string(),
                FailureKind::Panicked(m) => format!("panic: {m}"),
                _ => "unknown".to_owned(),
            };
            eprintln!("batch of {} items for {} failed: {why}", f.items, f.key);
        })
        .build(|account: String, amounts: Vec<i64>| async move {
            if amounts.iter().any(|a| *a < -500) {
                return Err(format!("suspicious debit on {account}"));
            }
            // Items of one account arrive in enqueue order.
            let total: i64 = amounts.iter().sum();
            println!("{account}: applied {} changes, net {total}", amounts.len());
            Ok(())
        })?;

    for i in 0..30 {
        let account = format!("acct-{}", i % 3);
        queue.enqueue(account, i * 10).await?;
    }
    queue.enqueue("acct-9".to_owned(), -1_000).await?;
    queue.wait_idle().await;
    println!("stats: {:?}", queue.stats());
    queue.shutdown().await;
    Ok(())
}
