//! Run: `cargo run -p electric-core --example workers`
//!
//! An auto-worker (one consumer, a result per item), a batch worker (size plus max-wait flush,
//! a result per item) and a service runner with ordered graceful shutdown.

use std::time::Duration;

use async_trait::async_trait;
use electric_core::collections::BoxError;
use electric_core::worker::{AutoWorker, BatchWorker, EndService, ServiceRunner};

struct FlushMetrics;

#[async_trait]
impl EndService for FlushMetrics {
    fn name(&self) -> &str {
        "metrics"
    }
    async fn stop(&self) -> Result<(), BoxError> {
        println!("metrics flushed");
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let squares = AutoWorker::builder()
        .capacity(128)
        .build(|x: u64| async move { x.checked_mul(x).ok_or("overflow") })?;
    println!("12^2 = {}", squares.submit(12).await?);
    println!("overflow: {:?}", squares.submit(u64::MAX).await.err());
    squares.shutdown().await;

    let mailer = BatchWorker::builder()
        .batch_size(10)
        .max_wait(Duration::from_millis(20))
        .build(|mails: Vec<String>| async move {
            println!("sending a batch of {}", mails.len());
            mails
                .into_iter()
                .map(|m| {
                    if m.contains('@') {
                        Ok(m.len())
                    } else {
                        Err(format!("bad address {m}"))
                    }
                })
                .collect::<Vec<_>>()
        })?;
    let (a, b) = tokio::join!(
        mailer.submit("a@example.com".into()),
        mailer.submit("nobody".into())
    );
    let b = b.map_err(|e| match std::error::Error::source(&e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    });
    println!("per-item results: {a:?} / {b:?}");

    let runner = ServiceRunner::new();
    runner.spawn("heartbeat", |cancel| async move {
        let mut beats = 0;
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                () = tokio::time::sleep(Duration::from_millis(10)) => beats += 1,
            }
        }
        println!("heartbeat stopped after {beats} beats");
        Ok::<_, BoxError>(())
    });
    runner.add_end_service(FlushMetrics);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let report = runner.shutdown(Duration::from_secs(5)).await;
    println!("clean shutdown: {}", report.is_clean());
    Ok(())
}
