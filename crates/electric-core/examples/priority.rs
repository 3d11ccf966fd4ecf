//! Run: `cargo run -p electric-core --example priority`
//!
//! A bounded priority queue (0 is the highest priority) and a rate limiter that admits callers
//! one per interval, best priority first.

use std::time::Duration;

use electric_core::collections::priority_queue::PushError;
use electric_core::collections::{PriorityQueue, PriorityRateLimiter};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let jobs = PriorityQueue::new(3, 100)?;
    jobs.try_push("nightly report", 2)
        .map_err(|e| e.to_string())?;
    jobs.try_push("page the on-call", 0)
        .map_err(|e| e.to_string())?;
    jobs.try_push("resize images", 1)
        .map_err(|e| e.to_string())?;
    if let Err(PushError::OutOfRange {
        priority, levels, ..
    }) = jobs.try_push("bogus", 7)
    {
        println!("refused priority {priority} (levels 0..{levels})");
    }
    while let Some((job, priority)) = jobs.try_pop() {
        println!("p{priority}: {job}");
    }

    // The first caller finds the limiter idle and is granted at once; the others are served
    // one per 100 ms, best priority first.
    let limiter = PriorityRateLimiter::new(Duration::from_millis(100), 1_000)?;
    let mut tasks = Vec::new();
    for (name, priority) in [("batch", 5), ("interactive", 0), ("backfill", 9)] {
        let limiter = limiter.clone();
        tasks.push(tokio::spawn(async move {
            limiter.acquire(priority).await.map(|()| name)
        }));
    }
    for t in tasks {
        println!("granted: {}", t.await??);
    }
    Ok(())
}
